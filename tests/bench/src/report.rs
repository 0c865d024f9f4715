//! `target/bench/results.json` and the generated part of `BENCHMARKS.md` (between markers; the
//! rest of the file, the hand-written analysis, is kept).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Start and end markers of the generated section of BENCHMARKS.md.
pub(crate) const BEGIN: &str =
    "<!-- form-etl-bench: generated section begins (do not edit by hand) -->";
pub(crate) const END: &str = "<!-- form-etl-bench: generated section ends -->";

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) memory_mib: u64,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) load_average_at_start: String,
    pub(crate) git_revision: String,
}

impl Machine {
    pub(crate) fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let memory_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let git_revision = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_mib: memory_kib / 1024,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            git_revision,
        }
    }
}

/// Median of the present values.
pub(crate) fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Line {
    /// What is measured.
    pub(crate) measure: String,
    /// Unit.
    pub(crate) unit: String,
    /// Median over the repeats.
    pub(crate) median: Option<f64>,
    /// Each repeat's value.
    pub(crate) runs: Vec<Option<f64>>,
    /// What it is compared to, and that reference's median.
    pub(crate) versus: Option<(String, Option<f64>)>,
    /// median / reference.
    pub(crate) ratio: Option<f64>,
    /// The target (`≥ 50% of …`, `≥ 40000`), and whether it is met.
    pub(crate) target: Option<String>,
    pub(crate) met: Option<bool>,
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => {
            let s = format!("{:.0}", x);
            // Thousands separators.
            let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{sign}{out}")
        }
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// One output of s3-sink (`--sink-outputs`), over the repeats.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutputRow {
    /// `avro`, `parquet`, `iceberg`.
    pub(crate) output: String,
    /// How it was configured.
    pub(crate) detail: String,
    /// Runs, and those that exited 0 by themselves (only these count in the rates and CPU).
    pub(crate) runs: usize,
    pub(crate) ok_runs: usize,
    /// Medians over the repeats.
    pub(crate) events_per_s: Option<f64>,
    pub(crate) steady_events_per_s: Option<f64>,
    pub(crate) cpu_seconds_per_million_events: Option<f64>,
    /// The largest of the repeats.
    pub(crate) peak_rss_mib: Option<f64>,
    /// Data files' bytes on S3 per row written (both tables), and per input event.
    pub(crate) bytes_per_row: Option<f64>,
    pub(crate) bytes_per_event: Option<f64>,
    /// The other objects' bytes per row (Iceberg: metadata, manifests, manifest lists; files:
    /// `_schemas/`).
    pub(crate) other_bytes_per_row: Option<f64>,
    /// Iceberg commits per minute.
    pub(crate) commits_per_min: Option<f64>,
    /// Iceberg: seconds from a record's arrival until it is committed (records one at a time),
    /// the largest and the median over every repeat, at this commit interval.
    pub(crate) visible_max_s: Option<f64>,
    pub(crate) visible_median_s: Option<f64>,
    pub(crate) commit_interval_s: Option<f64>,
}

/// Rows should be visible within the commit interval plus this.
const VISIBLE_SLACK_S: f64 = 2.0;

/// The table of the sink's outputs, then the Iceberg/Avro CPU line: `ratio` is Iceberg's CPU
/// per event over Avro's, against `target` (at most).
pub(crate) fn outputs_table(rows: &[OutputRow], ratio: Option<f64>, target: f64) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "s3-sink by output, each run over the same input topic (its own consumer group):\n"
    );
    let _ = writeln!(
        s,
        "| output | events/s | steady 10–90% events/s | CPU s per 1M events | peak RSS MiB | bytes per row (data) | bytes per event (data) | other bytes per row | commits/min | runs ok |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} |",
            r.output,
            r.detail,
            fmt_num(r.events_per_s),
            fmt_num(r.steady_events_per_s),
            fmt_num(r.cpu_seconds_per_million_events),
            fmt_num(r.peak_rss_mib),
            fmt_num(r.bytes_per_row),
            fmt_num(r.bytes_per_event),
            fmt_num(r.other_bytes_per_row),
            if r.commits_per_min.is_some() {
                fmt_num(r.commits_per_min)
            } else {
                String::new()
            },
            r.ok_runs,
            r.runs
        );
    }
    let _ = writeln!(s);
    for r in rows {
        if let (Some(max), Some(interval)) = (r.visible_max_s, r.commit_interval_s) {
            let _ = writeln!(
                s,
                "{}: a record arriving alone is committed (its rows visible) within {max:.2} s, median {} s, at a commit interval of {interval} s (target ≤ interval + {VISIBLE_SLACK_S} s = {} s: {}).\n",
                r.output,
                fmt_num(r.visible_median_s),
                interval + VISIBLE_SLACK_S,
                if max <= interval + VISIBLE_SLACK_S {
                    "met"
                } else {
                    "**not met**"
                }
            );
        }
    }
    match ratio {
        Some(x) => {
            let _ = writeln!(
                s,
                "Iceberg's sink CPU per event is {x:.2}× Avro's (target ≤ {target}×): {}.",
                if x <= target { "met" } else { "**not met**" }
            );
        }
        None => {
            let _ = writeln!(
                s,
                "Iceberg's sink CPU per event against Avro's (target ≤ {target}×): not measured \
                 (both outputs need a successful run)."
            );
        }
    }
    s
}

/// The generated Markdown section.
pub(crate) fn markdown(
    machine: &Machine,
    date: &str,
    commands: &[String],
    params: &[(String, String)],
    lines: &[Line],
    extra: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(s, "\n## Latest run ({date})\n");
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {} MiB memory, kernel {}, load average at start {}; tree `{}`. \
         The whole cluster (Kafka, S3 server, forms API) and the bench itself run on this machine.\n",
        machine.nproc,
        machine.cpu_model,
        machine.memory_mib,
        machine.kernel,
        machine.load_average_at_start,
        machine.git_revision
    );
    let _ = writeln!(s, "Commands:\n\n```sh");
    for c in commands {
        let _ = writeln!(s, "{c}");
    }
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "Parameters: {}\n",
        params
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "| measure | median | runs | compared to (median) | ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---:|---|:---:|");
    for l in lines {
        let runs = l
            .runs
            .iter()
            .map(|r| fmt_num(*r))
            .collect::<Vec<_>>()
            .join(" / ");
        let versus = l.versus.as_ref().map_or("".to_owned(), |(name, v)| {
            format!("{name} ({})", fmt_num(*v))
        });
        let ratio = l
            .ratio
            .map_or("".to_owned(), |r| format!("{:.0}%", r * 100.0));
        let met = match l.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {} | {} | {} | {} |",
            l.measure,
            l.unit,
            fmt_num(l.median),
            runs,
            versus,
            ratio,
            l.target.as_deref().unwrap_or(""),
            met
        );
    }
    s.push('\n');
    s.push_str(extra);
    let _ = writeln!(s, "\n{END}");
    s
}

/// Replaces the generated section of `path` (or appends it; creates the file with a title).
pub(crate) fn write_markdown(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path)
        .unwrap_or_else(|_| "# Benchmarks\n\nRun with `make bench`.\n".into());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section.trim_end(),
            &old[e + END.len()..]
        ),
        _ => format!("{}\n{}", old.trim_end(), format_args!("\n{section}")),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median([None]), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(Some(1234567.4)), "1,234,567");
        assert_eq!(fmt_num(Some(123.4)), "123");
        assert_eq!(fmt_num(Some(12.34)), "12.3");
        assert_eq!(fmt_num(Some(0.5)), "0.50");
        assert_eq!(fmt_num(None), "–");
    }

    #[test]
    fn keeps_the_hand_written_part() {
        let dir = std::env::temp_dir().join(format!("form-etl-bench-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("B.md");
        std::fs::write(
            &p,
            format!("# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## Analysis\nkept\n"),
        )
        .unwrap();
        write_markdown(&p, &format!("{BEGIN}\nnew\n{END}\n")).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(
            s.contains("intro") && s.contains("new") && s.contains("kept") && !s.contains("old"),
            "{s}"
        );
    }
}
