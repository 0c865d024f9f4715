//! `form-etl-chaos` (`make chaos`): the chaos suite of issue #15.
//!
//! It starts a private cluster of its own (a KRaft broker, s3s-fs and the forms API on free
//! ports of 127.0.0.1, state under `.chaos/run-<time>/`), runs the connectors under its own
//! supervisor, and plays the scenarios (`--list`): kills, outages, restarts, a hot swap, a
//! paused group member, poison. After each, once the pipeline has drained, an oracle reads every
//! object back with fastavro (and counts with avro-tools), the enriched topic and the dead
//! letters, and judges: every valid event's rows exactly once, no overlapping objects, every
//! poison event dead-lettered once with its reason, no secret in any log, no exit but ours. The
//! table of figures is printed and written to `target/chaos/report.md`; the exit status is
//! non-zero if any scenario failed.
//!
//! The process re-runs itself once: the outer one picks the free ports and sets `FORM_ETL_KAFKA`
//! and friends for the inner one, so the helpers of `form-etl-tests` (which read them) talk to
//! the private cluster, never to the shared one.

mod ctx;
mod flow;
mod oracle;
mod pipeline;
mod report;
mod scenarios;
mod supervisor;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use form_etl_tests::private_cluster::{Ports, send_signal};
use form_etl_tests::workspace_root;

use crate::report::Outcome;
use crate::scenarios::Scenario;

/// Set by the outer process for the inner one: `kafka,controller,s3,api,admin`.
const PORTS_ENV: &str = "FORM_ETL_CHAOS_PORTS";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "form-etl-chaos",
    about = "The chaos suite of issue #15 (make chaos)"
)]
struct Args {
    /// Scenarios to run (comma-separated or repeated; names from --list). Default: all but
    /// oracle-selftest.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// List the scenarios with their parameters and exit.
    #[arg(long)]
    list: bool,
    /// Seed of the random choices (kill moments, event mix, --max-records); default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Time budget of the whole run, in seconds: each scenario's drain wait is cut to fit, and a
    /// scenario that no longer fits is not run (and fails).
    #[arg(long, default_value_t = 1200)]
    budget_secs: u64,
    /// Keep the private broker's data directory at the end (it is deleted otherwise; configs,
    /// logs, downloads and ledgers stay under the run directory).
    #[arg(long)]
    keep_data: bool,
    /// Test the builds under DIR/target (`release/{kafka-source,s3-sink,forms-api}`,
    /// `wasm32-unknown-unknown/release/form_flatten.wasm`), e.g. a checkout of another commit;
    /// default: this workspace's.
    #[arg(long, value_name = "DIR")]
    build_root: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if args.list {
        for s in Scenario::ALL {
            let default = if Scenario::DEFAULT.contains(&s) {
                ""
            } else {
                " (not in the default run)"
            };
            println!("{}{default}\n    {}\n", s.name(), s.params());
        }
        return;
    }
    let code = match std::env::var(PORTS_ENV) {
        Err(_) => outer(),
        Ok(ports) => inner(args, &ports),
    };
    std::process::exit(code);
}

/// Picks the ports and runs the inner process with the environment pointing at them.
fn outer() -> i32 {
    let p = Ports::free();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("chaos: {e}");
            return 2;
        }
    };
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(
            PORTS_ENV,
            format!(
                "{},{},{},{},{}",
                p.kafka, p.controller, p.s3, p.api, p.admin
            ),
        )
        .env("FORM_ETL_KAFKA", format!("127.0.0.1:{}", p.kafka))
        .env("FORM_ETL_S3_ENDPOINT", format!("http://127.0.0.1:{}", p.s3))
        .env("FORM_ETL_FORMS_API", format!("http://127.0.0.1:{}", p.api))
        .env(
            "FORM_ETL_FORMS_ADMIN",
            format!("http://127.0.0.1:{}", p.admin),
        )
        .status();
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("chaos: running the suite: {e}");
            2
        }
    }
}

fn parse_ports(text: &str) -> anyhow::Result<Ports> {
    let v: Vec<u16> = text
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{PORTS_ENV}={text}"))?;
    let [kafka, controller, s3, api, admin] = v[..] else {
        bail!("{PORTS_ENV}={text}: five ports expected");
    };
    Ok(Ports {
        kafka,
        controller,
        s3,
        api,
        admin,
    })
}

fn inner(args: Args, ports: &str) -> i32 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return 2;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            r = run(args, ports) => match r {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("chaos: {e:#}");
                    2
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("chaos: interrupted; stopping the private cluster and the connectors");
                130
            }
        }
    })
}

/// Kills what an earlier run left behind (it was itself killed): processes whose pid file is
/// under `.chaos/` and whose command line names that run's directory.
fn reap_stale(chaos_dir: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pid") {
                out.push(p);
            }
        }
    }
    let Ok(runs) = std::fs::read_dir(chaos_dir) else {
        return;
    };
    for run in runs.flatten() {
        let run_dir = run.path();
        let mut pid_files = Vec::new();
        walk(&run_dir, &mut pid_files);
        for pf in pid_files {
            let Some(pid) = std::fs::read_to_string(&pf)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.is_empty() && cmdline.contains(&*run_dir.to_string_lossy()) {
                println!(
                    "chaos: killing pid {pid} left by an earlier run ({})",
                    pf.display()
                );
                let _ = send_signal(pid, "CONT");
                let _ = send_signal(pid, "KILL");
            }
            let _ = std::fs::remove_file(&pf);
        }
    }
}

async fn run(args: Args, ports: &str) -> anyhow::Result<bool> {
    let started = Instant::now();
    let ports = parse_ports(ports)?;
    let root = workspace_root();
    let mut selected = Vec::new();
    if args.scenario.is_empty() {
        selected.extend(Scenario::DEFAULT);
    } else {
        for name in &args.scenario {
            match Scenario::parse(name) {
                Some(s) if !selected.contains(&s) => selected.push(s),
                Some(_) => {}
                None => bail!(
                    "no scenario `{name}`; try --list ({})",
                    Scenario::ALL.map(Scenario::name).join(", ")
                ),
            }
        }
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let chaos_dir = root.join(".chaos");
    reap_stale(&chaos_dir);
    let run_dir = chaos_dir.join(format!(
        "run-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::create_dir_all(&run_dir)?;
    println!(
        "chaos: run {} (seed {seed}, budget {}s): {}",
        run_dir.display(),
        args.budget_secs,
        selected
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ctx = ctx::Ctx::setup(
        &run_dir,
        ports,
        seed,
        Duration::from_secs(args.budget_secs),
        args.build_root.as_deref(),
    )
    .await?;
    for (name, sha) in &ctx.bins.digests {
        println!("chaos: under test: {name} sha256 {sha}");
    }

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut i = 0;
    while i < selected.len() {
        let s = selected[i];
        if ctx.remaining() < Duration::from_secs(90) {
            outcomes.push(Outcome::skipped(
                s.name(),
                s.params(),
                "the run's time budget was spent",
            ));
            i += 1;
            continue;
        }
        // The two kill scenarios touch only their own connectors: they run side by side.
        let pair = (s == Scenario::KillSource || s == Scenario::KillSink)
            && selected.get(i + 1).is_some_and(|n| {
                (*n == Scenario::KillSource || *n == Scenario::KillSink) && *n != s
            });
        if pair {
            let (a, b) = tokio::join!(s.run(&ctx), selected[i + 1].run(&ctx));
            outcomes.push(a);
            outcomes.push(b);
            i += 2;
        } else {
            outcomes.push(s.run(&ctx).await);
            i += 1;
        }
        if let Some(o) = outcomes.last() {
            println!(
                "chaos: {} done: {}",
                o.name,
                if o.passed() { "PASS" } else { "FAIL" }
            );
        }
    }

    let passed = outcomes.iter().all(Outcome::passed);
    let table = report::table(&outcomes);
    let details = report::details(&outcomes);
    println!("\n{table}");
    println!("{details}");
    let mut md = format!(
        "# make chaos: {}\n\nRun directory `{}`, seed {seed}, {:.0}s in all. Binaries under test:\n\n",
        if passed { "PASS" } else { "FAIL" },
        run_dir.display(),
        started.elapsed().as_secs_f64()
    );
    for (name, sha) in &ctx.bins.digests {
        md.push_str(&format!("- `{name}` sha256 `{sha}`\n"));
    }
    md.push_str(&format!("\n{table}\n## Scenarios\n{details}"));
    let out_dir = root.join("target/chaos");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("report.md"), &md)?;
    std::fs::write(run_dir.join("report.md"), &md)?;
    println!(
        "chaos: {} in {:.0}s; report in {}",
        if passed { "PASS" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    if !args.keep_data {
        let mut cluster = ctx.cluster.lock().await;
        let _ = cluster.kafka.kill();
        let _ = std::fs::remove_dir_all(cluster.kafka.dir().join("data"));
    }
    Ok(passed)
}
