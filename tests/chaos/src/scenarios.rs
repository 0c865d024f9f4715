//! The scenarios of issue #15's `make chaos`, one function each. Every scenario builds its own
//! pipeline (topics, group, prefix) on the private cluster, prints its parameters, breaks
//! something while a steady flow runs, lets the pipeline drain, and hands the result to the
//! oracle.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use form_etl_tests::sink_support::committed;
use form_etl_tests::source_support::metric_sum;
use form_etl_tests::{consume_to_end, forms_api_stats, list_keys};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::ctx::{BUCKET, Ctx};
use crate::flow::{Kind, Plan, Times};
use crate::oracle;
use crate::pipeline::{
    Output, Pipeline, PipelineOpts, Progress, ScenarioRun, scrape, session_timeout_ms,
};
use crate::report::Outcome;

/// Events per second of the steady flows.
const RATE: f64 = 100.0;
/// Share of small poison events in the steady flows.
const POISON_RATIO: f64 = 0.02;
/// `kill -9` per connector in the kill scenarios.
const KILLS: usize = 20;
/// The next kill waits at most this long for the restarted connector's progress (issue #15's
/// target for the median recovery).
const KILL_RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// Issue #15: recovery after `kill -9`, median under 10 s.
const RECOVERY_TARGET_S: f64 = 10.0;
/// Segments close on record time every 2 s, so that a steady flow commits steadily.
const STEADY_SINK: (&str, &str) = ("s3/max-age", "2s");
/// Iceberg tables commit every 2 s (a data file closes at every commit), for the same reason.
const STEADY_ICEBERG_SINK: (&str, &str) = ("output/commit-interval", "2s");
/// Event dates of the steady flows (each date is a file per table, partition and segment).
const STEADY_DATES: Times = Times::Past { days: 2 };

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    ReplayCut,
    KillSource,
    KillSink,
    ApiFaults,
    S3Down,
    BrokerRestart,
    SinkRestartMaxRecords,
    HotSwap,
    TwoSinksPaused,
    Poison,
    IcebergKillSink,
    IcebergTwoSinksPaused,
    OracleSelftest,
}

impl Scenario {
    /// The default run, in order (`oracle-selftest` is run on its own).
    pub(crate) const DEFAULT: [Scenario; 12] = [
        Scenario::ReplayCut,
        Scenario::Poison,
        Scenario::KillSource,
        Scenario::KillSink,
        Scenario::ApiFaults,
        Scenario::S3Down,
        Scenario::BrokerRestart,
        Scenario::SinkRestartMaxRecords,
        Scenario::HotSwap,
        Scenario::TwoSinksPaused,
        Scenario::IcebergKillSink,
        Scenario::IcebergTwoSinksPaused,
    ];

    pub(crate) const ALL: [Scenario; 13] = [
        Scenario::ReplayCut,
        Scenario::Poison,
        Scenario::KillSource,
        Scenario::KillSink,
        Scenario::ApiFaults,
        Scenario::S3Down,
        Scenario::BrokerRestart,
        Scenario::SinkRestartMaxRecords,
        Scenario::HotSwap,
        Scenario::TwoSinksPaused,
        Scenario::IcebergKillSink,
        Scenario::IcebergTwoSinksPaused,
        Scenario::OracleSelftest,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::ReplayCut => "replay-cut",
            Scenario::KillSource => "kill-source",
            Scenario::KillSink => "kill-sink",
            Scenario::ApiFaults => "api-faults",
            Scenario::S3Down => "s3-down",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::SinkRestartMaxRecords => "sink-restart-max-records",
            Scenario::HotSwap => "hot-swap",
            Scenario::TwoSinksPaused => "two-sinks-paused",
            Scenario::Poison => "poison",
            Scenario::IcebergKillSink => "iceberg-kill-sink",
            Scenario::IcebergTwoSinksPaused => "iceberg-two-sinks-paused",
            Scenario::OracleSelftest => "oracle-selftest",
        }
    }

    /// Where its sinks write.
    pub(crate) fn output(self) -> Output {
        match self {
            Scenario::IcebergKillSink | Scenario::IcebergTwoSinksPaused => Output::Iceberg,
            _ => Output::Files,
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its parameters, as printed before it runs.
    pub(crate) fn params(self) -> String {
        let sink = match self.output() {
            Output::Files => format!(
                "sink `{}: {}` (segments close steadily), else the shipped configs",
                STEADY_SINK.0, STEADY_SINK.1
            ),
            Output::Iceberg => format!(
                "`output: iceberg`: the sink from `config/form-s3-sink-iceberg.yaml` with `{}: {}` (a snapshot, with a data file per table and date, every 2 s), its embedded SQL catalog's SQLite file in the scenario's directory, the warehouse in the chaos bucket, else the shipped configs; the tables are read back whole by DuckDB's `iceberg_scan` (the rows judged) and by pyiceberg (row for row the same), and in each table the newest snapshot holding the group's offsets must hold the topic's end",
                STEADY_ICEBERG_SINK.0, STEADY_ICEBERG_SINK.1
            ),
        };
        let steady = format!(
            "3 partitions; flow {RATE:.0} events/s ({:.0}% small poison, event dates 2024-03-01..03); {sink}",
            POISON_RATIO * 100.0,
        );
        match self {
            Scenario::ReplayCut => "1 partition; 2,000 valid events produced first, enriched by the source; sink `commit.interval: 60s`, `s3.max-records: 1000`, `s3.idle-flush: 1h`; sink run 1 `kill -9` once its objects are on S3 (listing unchanged for 3 s, every record received); run 2 `--max-records 300`; run 3 `--max-records` = the records left after run 2's commit (to the end)".into(),
            Scenario::KillSource | Scenario::KillSink | Scenario::IcebergKillSink => format!(
                "{steady}; 10 s of flow, then {KILLS} x `kill -9` of the {}, each after the restarted process's progress moved (waited at most {}s) plus a random 0.5-2.5 s; 5 s of flow after the last kill",
                if self == Scenario::KillSource { "source" } else { "sink" },
                KILL_RECOVERY_WAIT.as_secs()
            ),
            Scenario::ApiFaults => format!(
                "{steady}, but event times = now (nearly every event needs a fresh API answer); 10 s clean; 60 s of `{{\"error_500_ratio\":0.3,\"hang_ratio\":0.1}}`; 60 s of `{{\"outage\":\"refuse\"}}`; faults cleared; 5 s more"
            ),
            Scenario::S3Down => format!(
                "{steady}; 10 s; s3s-fs `kill -9`, down 60 s, started again on the same port and directory; 10 s; `kill -STOP` of s3s-fs once an upload is in flight (`s3_sink_inflight_bytes` > 0, polled every 20 ms, at most 20 s), 20 s, `kill -CONT`; 5 s more"
            ),
            Scenario::BrokerRestart => format!(
                "{steady}; 10 s; the broker `kill -9` and started again on the same port and log directory (the producer buffers meanwhile); 10 s more"
            ),
            Scenario::SinkRestartMaxRecords => format!(
                "{steady}; 10 s; `kill -9` of the sink; its next run with `--max-records N`, N random in 100..3000, must end with 0; then runs as usual; 10 s more"
            ),
            Scenario::HotSwap => format!(
                "{steady}; 10 s; the sink's `form_flatten.wasm` replaced (write + rename) by the same module with a custom section appended (same code, another sha256); the swap must show (`s3_sink_transform_generation` >= 1, nothing rejected); 10 s more"
            ),
            Scenario::TwoSinksPaused | Scenario::IcebergTwoSinksPaused => format!(
                "{steady}; two sinks in one group from the shipped sink config (per instance only the metrics port differs, and the instance id where the file has one); 10 s; `kill -STOP` of sink-b for its session timeout + 5 s, `kill -CONT`; 10 s more"
            ),
            Scenario::Poison => "3 partitions; 10,000 poison events (10 huge answers of 1.2 MB, 10 huge events of 990 KB whose enriched record is ~1.09 MB, 9,980 small ones spread over invalid JSON, wrong types, bad timestamps, missing fields, invalid UTF-8) shuffled among 10,000 valid events, 1,000 events/s; shipped configs plus the steady sink setting".into(),
            Scenario::OracleSelftest => "3 partitions; 600 events at 200/s (10% small poison); a clean run must pass; then the oracle is pointed at corrupted copies of its output (an object duplicated under another key, an object deleted, a dead letter removed, one duplicated, one with another reason, a secret in a log, an exit that was not ours, an enriched record duplicated) and must catch each".into(),
        }
    }

    /// Runs it; an error is reported as the scenario's failure.
    pub(crate) async fn run(self, ctx: &Ctx) -> Outcome {
        let started = Instant::now();
        println!("\n=== {} ===\n{}", self.name(), self.params());
        let res = match self {
            Scenario::ReplayCut => replay_cut(ctx).await,
            Scenario::KillSource => kill_loop(ctx, self, true).await,
            Scenario::KillSink | Scenario::IcebergKillSink => kill_loop(ctx, self, false).await,
            Scenario::ApiFaults => api_faults(ctx).await,
            Scenario::S3Down => s3_down(ctx).await,
            Scenario::BrokerRestart => broker_restart(ctx).await,
            Scenario::SinkRestartMaxRecords => sink_restart_max_records(ctx).await,
            Scenario::HotSwap => hot_swap(ctx).await,
            Scenario::TwoSinksPaused | Scenario::IcebergTwoSinksPaused => {
                two_sinks_paused(ctx, self).await
            }
            Scenario::Poison => poison(ctx).await,
            Scenario::OracleSelftest => oracle_selftest(ctx).await,
        };
        let mut out = match res {
            Ok(o) => o,
            Err(e) => Outcome::error(self.name(), self.params(), format!("{e:#}")),
        };
        out.secs = started.elapsed().as_secs_f64();
        out
    }
}

fn steady_opts(budget_s: u64) -> PipelineOpts {
    PipelineOpts {
        output: Output::Files,
        partitions: 3,
        sink: vec![(STEADY_SINK.0, STEADY_SINK.1.into())],
        source: Vec::new(),
        sinks: 1,
        budget: Duration::from_secs(budget_s),
    }
}

/// The steady options of `scenario`'s output.
fn steady_opts_for(scenario: Scenario, budget_s: u64) -> PipelineOpts {
    let mut opts = steady_opts(budget_s);
    if scenario.output() == Output::Iceberg {
        opts.output = Output::Iceberg;
        opts.sink = vec![(STEADY_ICEBERG_SINK.0, STEADY_ICEBERG_SINK.1.into())];
    }
    opts
}

fn rng(ctx: &Ctx, salt: u64) -> StdRng {
    StdRng::seed_from_u64(ctx.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)
}

/// The oracle over a finished run, plus the scenario's own checks.
fn judged(ctx: &Ctx, scenario: Scenario, run: ScenarioRun) -> Outcome {
    let findings = oracle::judge(&run.obs, &ctx.catalog);
    Outcome::new(scenario.name(), scenario.params(), findings, run)
}

/// Fails the outcome unless the median recovery is under the target.
fn require_recovery(out: &mut Outcome) {
    let (p50, _) = crate::report::recovery_stats(&out.recoveries);
    match p50 {
        Some((v, false)) if v < RECOVERY_TARGET_S => {}
        Some((v, censored)) => out.failures.push(format!(
            "recovery after kill -9: median {}{v:.1}s, issue #15 wants under {RECOVERY_TARGET_S:.0}s",
            if censored { ">" } else { "" }
        )),
        None => out.failures.push("no recovery was measured".into()),
    }
}

// ---------------------------------------------------------------------------------------------

async fn replay_cut(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let opts = PipelineOpts {
        output: Output::Files,
        partitions: 1,
        sink: vec![
            ("commit/interval", "60s".into()),
            ("s3/max-records", "1000".into()),
            ("s3/idle-flush", "1h".into()),
        ],
        source: Vec::new(),
        sinks: 1,
        budget: Duration::from_secs(170),
    };
    let mut p = Pipeline::create(ctx, "replay-cut", &opts).await?;
    const N: usize = 2000;
    let flow = p.flow(
        ctx,
        Times::Past { days: 3 },
        Plan::List(VecDeque::from(vec![Kind::Valid; N])),
        2000.0,
    )?;
    let ledger = flow.wait_all().await?;
    p.start_source();
    if !p.wait_source_drained(p.deadline).await {
        p.fail("the source did not enrich the 2,000 events in time");
        return Ok(judged(
            ctx,
            Scenario::ReplayCut,
            p.finish(ctx, ledger).await?,
        ));
    }
    p.note("the source enriched all 2,000 events");
    let sink = p.start_sink_with(0, Vec::new(), false);
    // Run 1: wait until every record is in and the objects listing stopped changing.
    let prefix = format!("{}/", p.prefix);
    let mut last: Vec<String> = Vec::new();
    let mut stable_since = Instant::now();
    loop {
        let keys: Vec<String> = list_keys(&ctx.s3, BUCKET, &prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if keys != last {
            last = keys;
            stable_since = Instant::now();
        }
        let received = match scrape(&sink.spec().metrics_url).await {
            Some(t) => metric_sum(&t, "component_received_events_total"),
            None => 0.0,
        };
        if !last.is_empty()
            && received >= N as f64
            && stable_since.elapsed() >= Duration::from_secs(3)
        {
            break;
        }
        if p.left() < Duration::from_secs(60) {
            p.fail(format!("run 1 did not put its objects on S3 in time ({} objects, {received} records received)", last.len()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (g, t) = (p.sink_group.clone(), p.enriched_topic.clone());
    let before = tokio::task::spawn_blocking(move || committed(&g, &t, 1)).await??;
    p.note(format!(
        "run 1: {} objects on S3 ({}), committed offset {:?} (nothing committed: {})",
        last.len(),
        first_offsets(&last),
        before,
        before == vec![-1]
    ));
    let progress = Progress::Sink {
        committed: before.clone(),
    };
    sink.set_next_run(vec!["--max-records".into(), "300".into()], true);
    sink.hold_after_run(2);
    let Some(kill) = sink.kill9() else {
        anyhow::bail!("the sink was not running at the kill");
    };
    p.note("run 1 killed (-9); run 2 starts with --max-records 300");
    let rec = p.measure_recovery(
        &sink,
        "the kill of run 1".into(),
        kill.at,
        progress,
        Some(kill),
        p.left(),
    );
    p.keep_pending(rec);
    match sink
        .wait_run_exit(2, p.left().saturating_sub(Duration::from_secs(30)))
        .await
    {
        Some(x) => p.note(format!("run 2 ended: {} ({})", x.status, x.why)),
        None => p.fail("run 2 (--max-records 300) did not end in time"),
    }
    let (g, t) = (p.sink_group.clone(), p.enriched_topic.clone());
    let after2 = tokio::task::spawn_blocking(move || committed(&g, &t, 1)).await??;
    let enriched = consume_to_end(&p.enriched_topic, Duration::from_secs(60)).await?;
    let rest = enriched
        .iter()
        .filter(|r| r.offset >= after2[0].max(0))
        .count();
    p.note(format!(
        "after run 2: committed {after2:?}; {rest} records left for run 3"
    ));
    sink.set_next_run(vec!["--max-records".into(), rest.to_string()], true);
    sink.release();
    match sink.wait_run_exit(3, p.left()).await {
        Some(x) => p.note(format!("run 3 ended: {} ({})", x.status, x.why)),
        None => p.fail("run 3 did not end in time"),
    }
    let keys: Vec<String> = list_keys(&ctx.s3, BUCKET, &prefix)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    p.note(format!("objects at the end: {}", first_offsets(&keys)));
    Ok(judged(
        ctx,
        Scenario::ReplayCut,
        p.finish(ctx, ledger).await?,
    ))
}

/// `form: +0 +390 …; form_field: …` of a listing.
fn first_offsets(keys: &[String]) -> String {
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in keys {
        let parts: Vec<&str> = k.split('/').collect();
        let table = parts.get(1).copied().unwrap_or("?").to_owned();
        let first = k
            .rsplit('+')
            .next()
            .and_then(|s| s.strip_suffix(".avro"))
            .and_then(|s| s.parse::<i64>().ok())
            .map(|o| format!("+{o}"))
            .unwrap_or_else(|| k.clone());
        by_table.entry(table).or_default().push(first);
    }
    by_table
        .into_iter()
        .map(|(t, v)| format!("{t}: {}", v.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn kill_loop(ctx: &Ctx, scenario: Scenario, source: bool) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, scenario.name(), &steady_opts_for(scenario, 340)).await?;
    let src = p.start_source();
    p.start_sinks();
    let target = if source { src } else { p.sinks[0].clone() };
    let label = target.label().to_owned();
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    let mut rng = rng(
        ctx,
        match scenario {
            Scenario::KillSource => 1,
            Scenario::KillSink => 2,
            _ => 4,
        },
    );
    p.hold(Duration::from_secs(10)).await;
    let mut kills = 0;
    while kills < KILLS {
        if p.left() < Duration::from_secs(30) {
            p.fail(format!(
                "only {kills} of {KILLS} kills fitted in the scenario's time"
            ));
            break;
        }
        let before = p.progress(&target).await;
        let kill = match target.kill9() {
            Some(k) => k,
            None => {
                // Between two runs: the supervisor restarts it within a second.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        kills += 1;
        let mut m = p.measure_recovery(
            &target,
            format!("kill {kills} of the {label}"),
            kill.at,
            before,
            Some(kill),
            p.left(),
        );
        match tokio::time::timeout(KILL_RECOVERY_WAIT, &mut m).await {
            Ok(Ok(r)) => p.push_recovery(r),
            Ok(Err(e)) => p.fail(format!("a recovery measurement failed: {e}")),
            Err(_) => p.keep_pending(m),
        }
        let gap = rng.random_range(0.5..2.5);
        p.hold(Duration::from_secs_f64(gap)).await;
    }
    p.note(format!("{kills} kills of the {label}"));
    p.hold(Duration::from_secs(5)).await;
    let ledger = flow.finish().await?;
    let mut out = judged(ctx, scenario, p.finish(ctx, ledger).await?);
    require_recovery(&mut out);
    Ok(out)
}

async fn api_faults(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "api-faults", &steady_opts(190)).await?;
    let src = p.start_source();
    p.start_sinks();
    let flow = p.flow(
        ctx,
        Times::Now,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    let set = |f: serde_json::Value| async move {
        let cluster = ctx.cluster.lock().await;
        cluster.forms_api.set_faults(f).await
    };
    form_etl_tests::reset_forms_api(&ctx.admin).await?;
    set(serde_json::json!({"error_500_ratio": 0.3, "hang_ratio": 0.1})).await?;
    p.note("API: 30% 500s, 10% hangs");
    p.hold(Duration::from_secs(60)).await;
    set(serde_json::json!({"outage": "refuse"})).await?;
    p.note("API: refused (outage)");
    p.hold(Duration::from_secs(60)).await;
    let before = p.progress(&src).await;
    set(serde_json::json!({})).await?;
    let back = Instant::now();
    p.note("API: faults cleared");
    let m = p.measure_recovery(&src, "the API outage".into(), back, before, None, p.left());
    p.keep_pending(m);
    p.hold(Duration::from_secs(5)).await;
    let stats = forms_api_stats(&ctx.admin).await?;
    let by_status = stats["by_status"].clone();
    p.note(format!("API answers during the run: {by_status}"));
    let n500 = by_status["500"].as_u64().unwrap_or(0);
    let hangs = by_status["hang"].as_u64().unwrap_or(0);
    if n500 == 0 || hangs == 0 {
        p.fail(format!("the faults did not reach the source ({n500} 500s, {hangs} hangs): the scenario tested nothing"));
    }
    let ledger = flow.finish().await?;
    Ok(judged(
        ctx,
        Scenario::ApiFaults,
        p.finish(ctx, ledger).await?,
    ))
}

async fn s3_down(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "s3-down", &steady_opts(190)).await?;
    p.start_source();
    p.start_sinks();
    let sink = p.sinks[0].clone();
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    ctx.cluster.lock().await.s3.down()?;
    p.note("S3 killed (-9)");
    p.hold(Duration::from_secs(60)).await;
    let before = p.progress(&sink).await;
    ctx.cluster.lock().await.s3.up().await?;
    let back = Instant::now();
    p.note("S3 started again (same port, same directory)");
    let m = p.measure_recovery(
        &sink,
        "S3 down 60 s".into(),
        back,
        before,
        None,
        Duration::from_secs(90),
    );
    match tokio::time::timeout(Duration::from_secs(20), m).await {
        Ok(Ok(r)) => p.push_recovery(r),
        _ => p.fail("no sink progress within 20 s of S3's return"),
    }
    p.hold(Duration::from_secs(5)).await;
    // kill -STOP while an upload is in flight.
    let watch_until = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < watch_until {
        if let Some(t) = scrape(&sink.spec().metrics_url).await
            && metric_sum(&t, "s3_sink_inflight_bytes") > 0.0
        {
            seen = Some(metric_sum(&t, "s3_sink_inflight_bytes"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.cluster.lock().await.s3.stop()?;
    match seen {
        Some(b) => p.note(format!(
            "S3 stopped (-STOP) with {b:.0} bytes of uploads in flight"
        )),
        None => p.fail(
            "no upload in flight was seen within 20 s: S3 stopped anyway (-STOP), not mid-upload",
        ),
    }
    p.hold(Duration::from_secs(20)).await;
    let before = p.progress(&sink).await;
    ctx.cluster.lock().await.s3.cont()?;
    let back = Instant::now();
    p.note("S3 continued (-CONT)");
    let m = p.measure_recovery(
        &sink,
        "S3 stopped 20 s".into(),
        back,
        before,
        None,
        p.left(),
    );
    p.keep_pending(m);
    p.hold(Duration::from_secs(5)).await;
    let ledger = flow.finish().await?;
    Ok(judged(ctx, Scenario::S3Down, p.finish(ctx, ledger).await?))
}

async fn broker_restart(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "broker-restart", &steady_opts(150)).await?;
    let src = p.start_source();
    p.start_sinks();
    let sink = p.sinks[0].clone();
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    let (before_src, before_sink) = (p.progress(&src).await, p.progress(&sink).await);
    let down = Instant::now();
    ctx.cluster.lock().await.kafka.restart().await?;
    let back = Instant::now();
    p.note(format!(
        "broker killed (-9) and started again: down {:.1}s",
        (back - down).as_secs_f64()
    ));
    let m1 = p.measure_recovery(
        &src,
        "the broker restart (source)".into(),
        back,
        before_src,
        None,
        p.left(),
    );
    let m2 = p.measure_recovery(
        &sink,
        "the broker restart (sink)".into(),
        back,
        before_sink,
        None,
        p.left(),
    );
    p.keep_pending(m1);
    p.keep_pending(m2);
    p.hold(Duration::from_secs(10)).await;
    let ledger = flow.finish().await?;
    Ok(judged(
        ctx,
        Scenario::BrokerRestart,
        p.finish(ctx, ledger).await?,
    ))
}

async fn sink_restart_max_records(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "sink-restart-max-records", &steady_opts(130)).await?;
    p.start_source();
    p.start_sinks();
    let sink = p.sinks[0].clone();
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    let n = rng(ctx, 3).random_range(100..3000u64);
    let before = p.progress(&sink).await;
    let run = sink.run().unwrap_or(1);
    sink.set_next_run(vec!["--max-records".into(), n.to_string()], true);
    let kill = sink.kill9().context("the sink was not running")?;
    p.note(format!(
        "sink killed (-9); its next run has --max-records {n}"
    ));
    let m = p.measure_recovery(
        &sink,
        "the kill".into(),
        kill.at,
        before,
        Some(kill),
        p.left(),
    );
    p.keep_pending(m);
    match sink
        .wait_run_exit(run + 1, p.left().saturating_sub(Duration::from_secs(30)))
        .await
    {
        Some(x) => p.note(format!(
            "the --max-records {n} run ended: {} ({})",
            x.status, x.why
        )),
        None => p.fail(format!("the --max-records {n} run did not end in time")),
    }
    p.hold(Duration::from_secs(10)).await;
    let ledger = flow.finish().await?;
    Ok(judged(
        ctx,
        Scenario::SinkRestartMaxRecords,
        p.finish(ctx, ledger).await?,
    ))
}

/// `wasm` with a custom section appended: the same module to the engine, other bytes.
fn with_custom_section(wasm: &[u8], note: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"form-etl-chaos";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(note.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

async fn hot_swap(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "hot-swap", &steady_opts(100)).await?;
    p.start_source();
    p.start_sinks();
    let sink = p.sinks[0].clone();
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    let watched = p.modules_dir.join("form_flatten.wasm");
    let base = std::fs::read(&watched)?;
    let variant = with_custom_section(&base, &format!("hot swap at {}", chrono::Utc::now()));
    let tmp = p.modules_dir.join("form_flatten.wasm.tmp");
    std::fs::write(&tmp, &variant)?;
    std::fs::rename(&tmp, &watched)?;
    let swapped = Instant::now();
    p.note(format!(
        "module replaced: {} -> {} bytes",
        base.len(),
        variant.len()
    ));
    let mut generation = None;
    while swapped.elapsed() < Duration::from_secs(30) {
        if let Some(t) = scrape(&sink.spec().metrics_url).await {
            let g = metric_sum(&t, "s3_sink_transform_generation");
            if g >= 1.0 {
                generation = Some((g, metric_sum(&t, "s3_sink_transform_rejected_total")));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match generation {
        Some((g, rejected)) => {
            p.note(format!(
                "swap seen after {:.1}s: generation {g}, rejected {rejected}",
                swapped.elapsed().as_secs_f64()
            ));
            if rejected > 0.0 {
                p.fail(format!(
                    "{rejected} modules rejected: the variant is the same module"
                ));
            }
        }
        None => p.fail("the sink did not swap the module within 30 s"),
    }
    p.hold(Duration::from_secs(10)).await;
    let ledger = flow.finish().await?;
    let run = p.finish(ctx, ledger).await?;
    let mut digests: BTreeMap<String, usize> = BTreeMap::new();
    for o in &run.obs.objects {
        *digests
            .entry(o.transforms.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let mut out = judged(ctx, Scenario::HotSwap, run);
    out.notes.push(format!(
        "objects by form_etl.transforms: {}",
        digests
            .iter()
            .map(|(d, n)| format!("{n} x {d}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if digests.len() < 2 {
        out.failures
            .push("no object was written by the swapped module".into());
    }
    Ok(out)
}

async fn two_sinks_paused(ctx: &Ctx, scenario: Scenario) -> anyhow::Result<Outcome> {
    let mut opts = steady_opts_for(scenario, 150);
    opts.sinks = 2;
    let mut p = Pipeline::create(ctx, scenario.name(), &opts).await?;
    p.start_source();
    p.start_sinks();
    let b = p.sinks[1].clone();
    let session = {
        let text = std::fs::read_to_string(p.sink_config(1))?;
        session_timeout_ms(&serde_yaml::from_str(&text)?)
    };
    let flow = p.flow(
        ctx,
        STEADY_DATES,
        Plan::Mix {
            poison_ratio: POISON_RATIO,
        },
        RATE,
    )?;
    p.hold(Duration::from_secs(10)).await;
    let pause = Duration::from_millis(session) + Duration::from_secs(5);
    let pid = b.sigstop()?;
    p.note(format!(
        "sink-b (pid {pid}) stopped (-STOP) for {:.0}s (session timeout {session} ms + 5 s)",
        pause.as_secs_f64()
    ));
    p.hold(pause).await;
    b.sigcont()?;
    p.note("sink-b continued (-CONT)");
    p.hold(Duration::from_secs(10)).await;
    let ledger = flow.finish().await?;
    Ok(judged(ctx, scenario, p.finish(ctx, ledger).await?))
}

async fn poison(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "poison", &steady_opts(110)).await?;
    p.start_source();
    p.start_sinks();
    let mut kinds: Vec<Kind> = Vec::with_capacity(20_000);
    kinds.extend(std::iter::repeat_n(Kind::HugeAnswer, 10));
    kinds.extend(std::iter::repeat_n(Kind::HugeEvent, 10));
    for i in 0..9_980 {
        kinds.push(Kind::SMALL_POISON[i % Kind::SMALL_POISON.len()]);
    }
    kinds.extend(std::iter::repeat_n(Kind::Valid, 10_000));
    kinds.shuffle(&mut rng(ctx, 4));
    let flow = p.flow(ctx, STEADY_DATES, Plan::List(kinds.into()), 1000.0)?;
    let ledger = flow.wait_all().await?;
    p.note(format!(
        "{} events produced ({} poison)",
        ledger.events.len(),
        ledger.poison()
    ));
    let run = p.finish(ctx, ledger).await?;
    let mut out = judged(ctx, Scenario::Poison, run);
    let reasons: Vec<String> = out
        .findings
        .as_ref()
        .map(|f| {
            f.reasons
                .iter()
                .map(|((k, r), n)| format!("{k} -> {r}: {n}"))
                .collect()
        })
        .unwrap_or_default();
    out.notes.push(format!(
        "dead letters by kind and reason: {}",
        reasons.join(", ")
    ));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// A clean run, then the oracle on corrupted copies of its output: each corruption must be
/// caught by the check meant for it.
async fn oracle_selftest(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut p = Pipeline::create(ctx, "oracle-selftest", &steady_opts(120)).await?;
    p.start_source();
    p.start_sinks();
    let flow = p.flow(ctx, STEADY_DATES, Plan::Mix { poison_ratio: 0.1 }, 200.0)?;
    p.hold(Duration::from_secs(3)).await;
    let ledger = flow.finish().await?;
    let run = p.finish(ctx, ledger).await?;
    let clean = oracle::judge(&run.obs, &ctx.catalog);
    let mut checks: Vec<(String, bool)> = vec![(
        format!("the clean run passes ({} failures)", clean.failures.len()),
        clean.failures.is_empty(),
    )];

    // Corrupted copies of the downloaded objects, read again with fastavro and avro-tools.
    let copy_dir = run.download.with_file_name("download-corrupted");
    let reread = |files: &[std::path::PathBuf]| -> anyhow::Result<oracle::Observations> {
        let mut obs = run.obs.clone();
        obs.objects = crate::pipeline::read_objects(files, &copy_dir)?;
        obs.avro_tools_rows = form_etl_tests::sink_support::count_with_avro_tools(files)?;
        Ok(obs)
    };
    let copy_all = || -> anyhow::Result<Vec<std::path::PathBuf>> {
        let _ = std::fs::remove_dir_all(&copy_dir);
        let mut out = Vec::new();
        for f in &run.files {
            let to = copy_dir.join(f.strip_prefix(&run.download)?);
            std::fs::create_dir_all(to.parent().context("a parent")?)?;
            std::fs::copy(f, &to)?;
            out.push(to);
        }
        Ok(out)
    };
    let form_file = |files: &[std::path::PathBuf]| {
        files
            .iter()
            .find(|f| f.to_string_lossy().contains("/form/event_date="))
            .cloned()
    };
    // 1. An object duplicated under the next first offset's name.
    let mut files = copy_all()?;
    if let Some(f) = form_file(&files) {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (head, first) = name.rsplit_once('+').context("a key with +")?;
        let first: i64 = first.trim_end_matches(".avro").parse()?;
        let dup = f.with_file_name(format!("{head}+{:020}.avro", first + 1));
        std::fs::copy(&f, &dup)?;
        files.push(dup);
        let j = oracle::judge(&reread(&files)?, &ctx.catalog);
        checks.push((
            format!(
                "a duplicated object: {} duplicated rows, {} overlaps, {} misnamed",
                j.form_dups, j.overlaps, j.bad_keys
            ),
            j.form_dups > 0 && j.overlaps > 0 && j.bad_keys > 0,
        ));
    }
    // 2. An object deleted.
    let mut files = copy_all()?;
    if let Some(f) = form_file(&files) {
        std::fs::remove_file(&f)?;
        files.retain(|x| *x != f);
        let j = oracle::judge(&reread(&files)?, &ctx.catalog);
        checks.push((
            format!("a deleted object: {} missing form rows", j.form_missing),
            j.form_missing > 0,
        ));
    }
    // 3. Dead letters: one removed, one duplicated, one with another reason.
    if !run.obs.letters.is_empty() {
        let mut o = run.obs.clone();
        o.letters.remove(0);
        let j = oracle::judge(&o, &ctx.catalog);
        checks.push((
            format!("a missing dead letter: {} missing", j.dlq_missing),
            j.dlq_missing == 1,
        ));
        let mut o = run.obs.clone();
        o.letters.push(o.letters[0].clone());
        let j = oracle::judge(&o, &ctx.catalog);
        checks.push((
            format!("a duplicated dead letter: {} duplicated", j.dlq_dups),
            j.dlq_dups == 1,
        ));
        let mut o = run.obs.clone();
        o.letters[0].reason = Some("form_not_found".into());
        let j = oracle::judge(&o, &ctx.catalog);
        checks.push((
            format!(
                "a dead letter with another reason: {} wrong",
                j.dlq_wrong_reason
            ),
            j.dlq_wrong_reason == 1,
        ));
    } else {
        checks.push(("the clean run has dead letters to corrupt".into(), false));
    }
    // 4. A secret in a log (a copy of the source's log with the token appended).
    let log_dir = run.download.with_file_name("logs-corrupted");
    std::fs::create_dir_all(&log_dir)?;
    let mut text = std::fs::read(run.download.with_file_name("source.log")).unwrap_or_default();
    text.extend_from_slice(
        format!("\nAuthorization: Bearer {}\n", ctx.secrets.api_token).as_bytes(),
    );
    std::fs::write(log_dir.join("source.log"), text)?;
    let secrets: Vec<String> = ctx
        .secrets
        .values()
        .iter()
        .map(|(_, v)| (*v).to_owned())
        .collect();
    let mut o = run.obs.clone();
    o.secret_hits = crate::pipeline::grep_logs(&log_dir, &secrets);
    let j = oracle::judge(&o, &ctx.catalog);
    checks.push((
        format!("a secret in a log: {} hits", j.secret_hits.len()),
        j.secret_hits.len() == 1,
    ));
    // 5. An exit that was not ours; 6. a duplicated enriched record.
    let mut o = run.obs.clone();
    o.exits.push(crate::supervisor::ExitRecord {
        label: "source".into(),
        run: 99,
        pid: 1,
        at_s: 0.0,
        status: "exit 1".into(),
        ours: false,
        why: "exited by itself".into(),
    });
    let j = oracle::judge(&o, &ctx.catalog);
    checks.push((
        format!("an exit that was not ours: {} found", j.foreign_exits.len()),
        j.foreign_exits.len() == 1,
    ));
    let mut o = run.obs.clone();
    if let Some(r) = o.enriched.first().cloned() {
        o.enriched.push(r);
    }
    let j = oracle::judge(&o, &ctx.catalog);
    checks.push((
        format!(
            "a duplicated enriched record: {} duplicated",
            j.enriched_dups
        ),
        j.enriched_dups == 1,
    ));

    let mut out = Outcome::new(
        Scenario::OracleSelftest.name(),
        Scenario::OracleSelftest.params(),
        clean,
        run,
    );
    for (what, ok) in checks {
        out.notes.push(format!(
            "{}: {what}",
            if ok { "caught" } else { "NOT CAUGHT" }
        ));
        if !ok {
            out.failures.push(format!("oracle self-test: {what}"));
        }
    }
    Ok(out)
}
