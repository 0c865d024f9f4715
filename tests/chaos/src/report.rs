//! The report: one table line per scenario (printed, and written to `target/chaos/report.md`
//! with each scenario's parameters, notes and failures below it).

use std::fmt::Write as _;

use crate::oracle::Findings;
use crate::pipeline::{Recovery, ScenarioRun};

/// One scenario's result.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) name: String,
    pub(crate) params: String,
    pub(crate) findings: Option<Findings>,
    pub(crate) recoveries: Vec<Recovery>,
    pub(crate) notes: Vec<String>,
    /// The scenario's own failures (the oracle's are in `findings`).
    pub(crate) failures: Vec<String>,
    pub(crate) secs: f64,
}

impl Outcome {
    pub(crate) fn new(name: &str, params: String, findings: Findings, run: ScenarioRun) -> Self {
        Self {
            name: name.to_owned(),
            params,
            findings: Some(findings),
            recoveries: run.recoveries,
            notes: run.notes,
            failures: run.failures,
            secs: run.secs,
        }
    }

    /// A scenario that could not run to its end.
    pub(crate) fn error(name: &str, params: String, error: String) -> Self {
        Self {
            name: name.to_owned(),
            params,
            findings: None,
            recoveries: Vec::new(),
            notes: Vec::new(),
            failures: vec![format!("the scenario could not run: {error}")],
            secs: 0.0,
        }
    }

    /// Not run (the time budget was spent).
    pub(crate) fn skipped(name: &str, params: String, why: &str) -> Self {
        let mut o = Self::error(name, params, String::new());
        o.failures = vec![format!("not run: {why}")];
        o
    }

    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty()
            && self
                .findings
                .as_ref()
                .is_some_and(|f| f.failures.is_empty())
    }

    fn all_failures(&self) -> Vec<String> {
        let mut v = self.failures.clone();
        if let Some(f) = &self.findings {
            v.extend(f.failures.iter().cloned());
        }
        v
    }
}

/// Seconds, and whether only a lower bound (the measurement ended before progress moved).
pub(crate) type Secs = (f64, bool);

/// `(median, max)` of the recoveries, each `(seconds, censored)`: a measurement that ended
/// before progress moved counts as its waiting time, a lower bound.
pub(crate) fn recovery_stats(recs: &[Recovery]) -> (Option<Secs>, Option<Secs>) {
    let mut v: Vec<(f64, bool)> = recs
        .iter()
        .map(|r| match r.secs {
            Some(s) => (s, false),
            None => (r.waited_s, true),
        })
        .collect();
    if v.is_empty() {
        return (None, None);
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = v[(v.len() - 1) / 2];
    let max = *v.last().expect("not empty");
    (Some(median), Some(max))
}

fn secs((v, censored): Secs) -> String {
    format!("{}{v:.1}s", if censored { ">" } else { "" })
}

/// The table (markdown).
pub(crate) fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| scenario | events (valid+poison) | rows expected / found | duplicates | missing | dead letters expected / found | recovery p50 / max (n) | verdict |\n|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let (p50, max) = recovery_stats(&o.recoveries);
        let rec = match (p50, max) {
            (Some(a), Some(b)) => format!("{} / {} ({})", secs(a), secs(b), o.recoveries.len()),
            _ => "-".into(),
        };
        let verdict = if o.passed() { "PASS" } else { "FAIL" };
        match &o.findings {
            Some(f) => {
                let _ = writeln!(
                    s,
                    "| {} | {} ({}+{}) | {} / {} | {} | {} | {} / {} | {rec} | {verdict} |",
                    o.name,
                    f.valid + f.poison,
                    f.valid,
                    f.poison,
                    f.rows_expected(),
                    f.rows_found(),
                    f.duplicates(),
                    f.missing(),
                    f.dlq_expected,
                    f.dlq_found,
                );
            }
            None => {
                let _ = writeln!(s, "| {} | - | - | - | - | - | {rec} | {verdict} |", o.name);
            }
        }
    }
    s
}

/// The details below the table: parameters, what happened, every failure.
pub(crate) fn details(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let _ = writeln!(
            s,
            "\n### {} ({}, {:.0}s)\n\nParameters: {}\n",
            o.name,
            if o.passed() { "PASS" } else { "FAIL" },
            o.secs,
            o.params
        );
        if let Some(f) = &o.findings {
            let _ = writeln!(
                s,
                "- rows: form {} / {} (dups {}, missing {}), form_field {} / {} (dups {}, missing {}), unknown {}; {} objects ({} unreadable, {} overlapping pairs, {} misnamed, {} rows outside their range); {} {} rows, {}",
                f.form_expected,
                f.form_found,
                f.form_dups,
                f.form_missing,
                f.field_expected,
                f.field_found,
                f.field_dups,
                f.field_missing,
                f.unknown_rows,
                f.objects,
                f.unreadable,
                f.overlaps,
                f.bad_keys,
                f.misplaced,
                if f.tables.is_empty() {
                    "fastavro"
                } else {
                    "DuckDB"
                },
                f.rows_read,
                if f.tables.is_empty() {
                    format!(
                        "avro-tools {}",
                        f.avro_tools_rows
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into())
                    )
                } else {
                    format!("tables: {}", f.tables.join("; "))
                }
            );
            let _ = writeln!(
                s,
                "- enriched topic: {} records ({} duplicated, {} missing, {} unexpected)",
                f.enriched, f.enriched_dups, f.enriched_missing, f.enriched_unexpected
            );
            let _ = writeln!(
                s,
                "- dead letters: {} expected, {} found ({} missing, {} duplicated, {} wrong reason, {} altered, {} unexpected); by kind and reason: {}",
                f.dlq_expected,
                f.dlq_found,
                f.dlq_missing,
                f.dlq_dups,
                f.dlq_wrong_reason,
                f.dlq_altered,
                f.dlq_unexpected,
                f.reasons
                    .iter()
                    .map(|((k, r), n)| format!("{k}->{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                s,
                "- exits: {} ours, {} not ours; secret hits: {}; drained: {}",
                f.exits_ours,
                f.foreign_exits.len(),
                f.secret_hits.len(),
                f.drained
            );
        }
        if !o.recoveries.is_empty() {
            let list: Vec<String> = o
                .recoveries
                .iter()
                .map(|r| match r.secs {
                    Some(v) => format!("{v:.1}"),
                    None => format!(">{:.1}", r.waited_s),
                })
                .collect();
            let _ = writeln!(s, "- recoveries (s): {}", list.join(" "));
        }
        for n in &o.notes {
            let _ = writeln!(s, "- {n}");
        }
        for x in o.all_failures() {
            let _ = writeln!(s, "- **FAIL**: {x}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(secs: Option<f64>, waited: f64) -> Recovery {
        Recovery {
            what: String::new(),
            secs,
            waited_s: waited,
        }
    }

    #[test]
    fn recovery_median_counts_censored_as_lower_bounds() {
        let (p50, max) = recovery_stats(&[r(Some(2.0), 2.0), r(None, 10.0), r(Some(3.0), 3.0)]);
        assert_eq!(p50, Some((3.0, false)));
        assert_eq!(max, Some((10.0, true)));
        assert_eq!(recovery_stats(&[]), (None, None));
        let (p50, _) = recovery_stats(&[r(None, 10.0), r(None, 10.0), r(Some(1.0), 1.0)]);
        assert_eq!(p50, Some((10.0, true)));
    }
}
