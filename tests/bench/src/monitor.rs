//! Runs a child process and measures it: wall time until exit, peak RSS (`VmHWM` polled from
//! `/proc/PID/status`, cross-checked with `wait4`'s `ru_maxrss`) and CPU seconds (utime+stime).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

/// How often `/proc` is sampled (and the exit noticed).
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How often the per-thread CPU is read.
const TASK_SCAN_EVERY: Duration = Duration::from_millis(500);
/// After SIGTERM on a timeout, SIGKILL follows this much later.
const KILL_GRACE: Duration = Duration::from_secs(15);

/// What a monitored process did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct ProcReport {
    /// Label.
    pub(crate) name: String,
    /// Seconds from spawn to exit.
    pub(crate) wall_seconds: f64,
    /// Exit code (None: killed by a signal).
    pub(crate) exit_code: Option<i32>,
    /// True when we had to stop it (deadline or stop request).
    pub(crate) stopped_by_bench: bool,
    /// Peak RSS, MiB: the largest `VmHWM` seen in `/proc/PID/status`.
    pub(crate) peak_rss_mib: f64,
    /// Peak RSS, MiB, from `wait4` (`ru_maxrss`); not used: Linux carries the parent's peak
    /// over fork+exec, so it is at least the bench's own RSS.
    pub(crate) maxrss_mib: f64,
    /// CPU seconds (user + system) from `wait4`.
    pub(crate) cpu_seconds: f64,
    /// User CPU seconds.
    pub(crate) user_seconds: f64,
    /// System CPU seconds.
    pub(crate) system_seconds: f64,
    /// CPU seconds (utime+stime) last read from `/proc/PID/stat` before the exit.
    pub(crate) cpu_polled_seconds: f64,
    /// CPU seconds per thread name (threads of one name summed), largest first, as last read
    /// from `/proc/PID/task/*/stat` (every 500 ms): which thread is the busy one.
    pub(crate) threads_cpu_seconds: Vec<(String, f64)>,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub(crate) cores_used: f64,
    /// The log file (stdout and stderr).
    pub(crate) log: String,
}

impl ProcReport {
    /// True when it exited 0 by itself.
    pub(crate) fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.stopped_by_bench
    }
}

/// A running monitored process.
#[derive(Debug)]
pub(crate) struct Monitored {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<ProcReport>,
    /// When it was spawned.
    pub(crate) started: Instant,
}

impl Monitored {
    /// Asks it to stop (SIGTERM, then SIGKILL after a grace period).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// True once it has exited.
    pub(crate) fn finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the exit and returns the report.
    pub(crate) fn join(self) -> ProcReport {
        self.handle.join().expect("monitor thread panicked")
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `VmHWM` of a live process, KiB.
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, seconds (`/proc/PID/stat` fields 14 and 15).
fn proc_cpu_seconds(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

/// Reads `/proc/PID/task/*/stat`: thread id → (name, CPU seconds).
fn scan_threads(pid: i32, out: &mut std::collections::HashMap<i32, (String, f64)>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[open + 1..close].to_owned();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, ticks as f64 / clk_tck()));
    }
}

/// Sums threads by name (digits stripped: `rdk:broker1` and `rdk:broker2` together), largest first.
fn by_name(threads: &std::collections::HashMap<i32, (String, f64)>) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    for (name, cpu) in threads.values() {
        let key: String = name
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        *sums.entry(key).or_default() += cpu;
    }
    let mut v: Vec<(String, f64)> = sums.into_iter().filter(|(_, c)| *c > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Spawns `cmd` (stdout and stderr to `log`) and monitors it on a thread until it exits, or
/// until `deadline`, when it is stopped.
pub(crate) fn spawn(
    name: &str,
    mut cmd: Command,
    log: &Path,
    deadline: Duration,
) -> anyhow::Result<Monitored> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {name}: {cmd:?}"))?;
    let pid = child.id() as i32;
    // The monitor thread reaps the child with wait4; the std handle is not used again.
    drop(child);
    let stop = Arc::new(AtomicBool::new(false));
    let (name, log_s, stop2) = (name.to_owned(), log.display().to_string(), stop.clone());
    let handle = std::thread::spawn(move || {
        let mut hwm_kib = 0u64;
        let mut cpu_polled = 0.0f64;
        let mut threads: std::collections::HashMap<i32, (String, f64)> = Default::default();
        let mut last_task_scan: Option<Instant> = None;
        let mut term_sent: Option<Instant> = None;
        let mut stopped = false;
        loop {
            if let Some(k) = vm_hwm_kib(pid) {
                hwm_kib = hwm_kib.max(k);
            }
            if let Some(c) = proc_cpu_seconds(pid) {
                cpu_polled = cpu_polled.max(c);
            }
            if last_task_scan.is_none_or(|t| t.elapsed() >= TASK_SCAN_EVERY) {
                last_task_scan = Some(Instant::now());
                scan_threads(pid, &mut threads);
            }
            let mut status = 0i32;
            // SAFETY: zeroed rusage is a valid out-parameter.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waiting for our own child, valid pointers.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid || r < 0 {
                let wall = started.elapsed().as_secs_f64();
                let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let (user, sys) = if r == pid {
                    (tv(ru.ru_utime), tv(ru.ru_stime))
                } else {
                    (0.0, 0.0)
                };
                let exit_code =
                    (r == pid && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status));
                return ProcReport {
                    name,
                    wall_seconds: wall,
                    exit_code,
                    stopped_by_bench: stopped,
                    peak_rss_mib: hwm_kib as f64 / 1024.0,
                    maxrss_mib: ru.ru_maxrss as f64 / 1024.0,
                    cpu_seconds: user + sys,
                    user_seconds: user,
                    system_seconds: sys,
                    cpu_polled_seconds: cpu_polled,
                    threads_cpu_seconds: by_name(&threads),
                    cores_used: (user + sys) / wall.max(1e-9),
                    log: log_s,
                };
            }
            let overdue = started.elapsed() > deadline || stop2.load(Ordering::Relaxed);
            match term_sent {
                None if overdue => {
                    stopped = true;
                    signal(pid, libc::SIGTERM);
                    term_sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() > KILL_GRACE => {
                    signal(pid, libc::SIGKILL);
                }
                _ => {}
            }
            std::thread::sleep(POLL_EVERY);
        }
    });
    Ok(Monitored {
        stop,
        handle,
        started,
    })
}

/// Waits until `url` answers 2xx, up to `deadline`.
pub(crate) async fn wait_http_ok(url: &str, deadline: Duration) -> bool {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Keeps the last answer of `url` (a Prometheus `/metrics`), polled every 500 ms until `stop`;
/// writes it to `out` at the end.
pub(crate) fn spawn_metrics_scraper(
    url: String,
    out: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut last = String::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && let Ok(t) = r.text().await
            {
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !last.is_empty() {
            let _ = std::fs::write(&out, last);
        }
    })
}

/// `cmd` wrapped in `perf record` (flat profile, software clock, all threads) writing `data`.
/// The monitored process is then perf itself (its RSS is perf's; CPU includes the child's).
pub(crate) fn under_perf(cmd: &Command, data: &Path) -> Command {
    let mut c = Command::new("perf");
    c.args(["record", "-q", "-F", "499", "-o"])
        .arg(data)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Writes `perf report` (self time by DSO and symbol) of `data` to `report`.
pub(crate) fn perf_report(data: &Path, report: &Path) {
    if let Ok(out) = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0.5",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(data)
        .output()
    {
        let _ = std::fs::write(report, out.stdout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child() {
        let dir = std::env::temp_dir().join(format!("form-etl-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3",
        ]);
        let m = spawn("sh", cmd, &dir.join("sh.log"), Duration::from_secs(60)).unwrap();
        let r = m.join();
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.stopped_by_bench);
        assert!(r.maxrss_mib > 0.0);
        assert!(r.cpu_seconds > 0.0);
    }

    #[test]
    fn stops_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("form-etl-bench-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let m = spawn(
            "sleep",
            cmd,
            &dir.join("sleep.log"),
            Duration::from_millis(200),
        )
        .unwrap();
        let r = m.join();
        assert!(r.stopped_by_bench);
        assert_eq!(r.exit_code, None);
        assert!(r.wall_seconds < 10.0);
    }

    #[test]
    fn reads_own_cpu() {
        assert!(proc_cpu_seconds(std::process::id() as i32).is_some());
    }
}
