//! The suite's own supervisor: runs a connector binary, restarts it one second after it exits
//! (whatever the reason), and records every exit with whether it was one of ours: a `kill -9`
//! the suite sent, a `SIGTERM` drain that ended with status 0, or a `--max-records` run that
//! ended with status 0. Any other exit is a finding.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use form_etl_tests::private_cluster::send_signal;

/// How long the supervisor waits before starting a connector again (as the review's
/// `while :; do …; sleep 1; done`).
pub(crate) const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ConnectorSpec {
    /// `source`, `sink`, `sink-b`, …
    pub(crate) label: String,
    pub(crate) bin: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) envs: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    /// stdout and stderr of every run, appended.
    pub(crate) log: PathBuf,
    /// `http://127.0.0.1:{port}` of its `/metrics` and `/health`.
    pub(crate) metrics_url: String,
}

/// Why a run ended, as the supervisor judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Kill,
    Term,
}

/// One exit of a supervised connector.
#[derive(Debug, Clone)]
pub(crate) struct ExitRecord {
    pub(crate) label: String,
    pub(crate) run: u32,
    pub(crate) pid: u32,
    /// Seconds since the supervisor started.
    pub(crate) at_s: f64,
    pub(crate) status: String,
    /// One of ours (a kill we sent, a drain or `--max-records` run ending with 0).
    pub(crate) ours: bool,
    pub(crate) why: String,
}

/// One `kill -9` sent by the suite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kill {
    pub(crate) at: Instant,
    /// How many kills this supervisor had sent before this one.
    pub(crate) index: usize,
}

#[derive(Debug)]
struct Running {
    pid: u32,
    run: u32,
    clean_exit_expected: bool,
}

#[derive(Debug, Default)]
struct State {
    running: Option<Running>,
    runs: u32,
    next_args: Vec<String>,
    next_clean_exit: bool,
    hold_after_run: Option<u32>,
    stopping: bool,
    sent: HashMap<u32, Sent>,
    exits: Vec<ExitRecord>,
    kills: usize,
    stopped_pids: Vec<u32>,
}

/// A supervised connector.
#[derive(Debug)]
pub(crate) struct Supervisor {
    spec: Arc<ConnectorSpec>,
    state: Arc<Mutex<State>>,
    started: Instant,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts the loop (the connector starts at once).
    pub(crate) fn start(spec: ConnectorSpec) -> Self {
        Self::start_with(spec, Vec::new(), false)
    }

    /// Starts the loop; the first run gets `first_args` too, and is expected to end with exit
    /// status 0 by itself when `clean_exit` (a `--max-records` run).
    pub(crate) fn start_with(
        spec: ConnectorSpec,
        first_args: Vec<String>,
        clean_exit: bool,
    ) -> Self {
        let spec = Arc::new(spec);
        let state = Arc::new(Mutex::new(State {
            next_args: first_args,
            next_clean_exit: clean_exit,
            ..State::default()
        }));
        let started = Instant::now();
        let task = tokio::spawn(supervise(spec.clone(), state.clone(), started));
        Self {
            spec,
            state,
            started,
            task: Mutex::new(Some(task)),
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.spec.label
    }

    pub(crate) fn spec(&self) -> &ConnectorSpec {
        &self.spec
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("supervisor state")
    }

    /// The pid of the running connector, if one runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().running.as_ref().map(|r| r.pid)
    }

    /// The run number of the running connector (1 for the first start).
    pub(crate) fn run(&self) -> Option<u32> {
        self.lock().running.as_ref().map(|r| r.run)
    }

    /// How many `kill -9` were sent.
    pub(crate) fn kills(&self) -> usize {
        self.lock().kills
    }

    /// Every exit so far.
    pub(crate) fn exits(&self) -> Vec<ExitRecord> {
        self.lock().exits.clone()
    }

    /// The next run gets `args` too; `clean_exit`: it is expected to end by itself with 0.
    pub(crate) fn set_next_run(&self, args: Vec<String>, clean_exit: bool) {
        let mut s = self.lock();
        s.next_args = args;
        s.next_clean_exit = clean_exit;
    }

    /// Starts no run after run `run` until [`Supervisor::release`].
    pub(crate) fn hold_after_run(&self, run: u32) {
        self.lock().hold_after_run = Some(run);
    }

    /// Undoes [`Supervisor::hold_after_run`].
    pub(crate) fn release(&self) {
        self.lock().hold_after_run = None;
    }

    /// `kill -9` of the running connector (a crash); `None` if none runs.
    pub(crate) fn kill9(&self) -> Option<Kill> {
        let mut s = self.lock();
        let pid = s.running.as_ref()?.pid;
        s.sent.insert(pid, Sent::Kill);
        let index = s.kills;
        s.kills += 1;
        let at = Instant::now();
        if let Err(e) = send_signal(pid, "KILL") {
            eprintln!("chaos: kill -9 {pid} ({}): {e:#}", self.spec.label);
        }
        Some(Kill { at, index })
    }

    /// `kill -STOP` of the running connector; returns its pid.
    pub(crate) fn sigstop(&self) -> anyhow::Result<u32> {
        let mut s = self.lock();
        let pid = s
            .running
            .as_ref()
            .map(|r| r.pid)
            .with_context(|| format!("{} is not running", self.spec.label))?;
        send_signal(pid, "STOP")?;
        s.stopped_pids.push(pid);
        Ok(pid)
    }

    /// `kill -CONT` of what [`Supervisor::sigstop`] stopped.
    pub(crate) fn sigcont(&self) -> anyhow::Result<()> {
        let pids = std::mem::take(&mut self.lock().stopped_pids);
        for pid in pids {
            send_signal(pid, "CONT")?;
        }
        Ok(())
    }

    /// Waits until run `run` has exited (at most `timeout`); its exit record, if it did.
    pub(crate) async fn wait_run_exit(&self, run: u32, timeout: Duration) -> Option<ExitRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.lock().exits.iter().find(|e| e.run == run) {
                return Some(e.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops supervising: `SIGTERM` to the running connector (a drain, which must end with
    /// status 0 within `timeout`, else it is killed and the exit recorded as a finding), and no
    /// restart. Returns every exit.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> Vec<ExitRecord> {
        let pid = {
            let mut s = self.lock();
            s.stopping = true;
            let pid = s.running.as_ref().map(|r| r.pid);
            if let Some(pid) = pid {
                s.sent.insert(pid, Sent::Term);
            }
            pid
        };
        if let Some(pid) = pid {
            let _ = self.sigcont();
            let _ = send_signal(pid, "TERM");
        }
        let task = self.task.lock().expect("supervisor task").take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(timeout, task).await.is_err() {
                let mut s = self.lock();
                if let Some(r) = s.running.take() {
                    let _ = send_signal(r.pid, "KILL");
                    let at_s = self.started.elapsed().as_secs_f64();
                    s.exits.push(ExitRecord {
                        label: self.spec.label.clone(),
                        run: r.run,
                        pid: r.pid,
                        at_s,
                        status: "killed".into(),
                        ours: false,
                        why: format!("no exit within {timeout:?} of SIGTERM (drain hang); killed"),
                    });
                }
                abort.abort();
            }
        }
        self.exits()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let mut s = self.lock();
        s.stopping = true;
        if let Some(r) = &s.running {
            let _ = send_signal(r.pid, "CONT");
            let _ = send_signal(r.pid, "KILL");
        }
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

async fn supervise(spec: Arc<ConnectorSpec>, state: Arc<Mutex<State>>, started: Instant) {
    loop {
        let next = {
            let mut s = state.lock().expect("supervisor state");
            if s.stopping {
                return;
            }
            if s.hold_after_run.is_some_and(|n| s.runs >= n) {
                None
            } else {
                s.runs += 1;
                Some((
                    std::mem::take(&mut s.next_args),
                    std::mem::take(&mut s.next_clean_exit),
                    s.runs,
                ))
            }
        };
        let Some((args, clean_exit, run)) = next else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let child = spawn(&spec, &args, run);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                state
                    .lock()
                    .expect("supervisor state")
                    .exits
                    .push(ExitRecord {
                        label: spec.label.clone(),
                        run,
                        pid: 0,
                        at_s: started.elapsed().as_secs_f64(),
                        status: "not started".into(),
                        ours: false,
                        why: format!("{e:#}"),
                    });
                tokio::time::sleep(RESTART_DELAY).await;
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        {
            let mut s = state.lock().expect("supervisor state");
            s.running = Some(Running {
                pid,
                run,
                clean_exit_expected: clean_exit,
            });
            let _ = std::fs::write(spec.log.with_extension("pid"), format!("{pid}\n"));
        }
        let status = child.wait().await;
        {
            let mut s = state.lock().expect("supervisor state");
            let running = s.running.take();
            let sent = s.sent.remove(&pid);
            let clean_expected = running.as_ref().is_some_and(|r| r.clean_exit_expected);
            let (text, ours, why) = match status {
                Err(e) => (format!("wait failed: {e}"), false, "wait failed".to_owned()),
                Ok(st) => {
                    let text = match (st.code(), st.signal()) {
                        (Some(c), _) => format!("exit {c}"),
                        (None, Some(sig)) => format!("signal {sig}"),
                        _ => format!("{st}"),
                    };
                    let (ours, why) = match (sent, st.code(), st.signal()) {
                        (Some(Sent::Kill), _, Some(9)) => (true, "our kill -9"),
                        (Some(Sent::Term), Some(0), _) => (true, "SIGTERM drain"),
                        (None, Some(0), _) if clean_expected => (true, "--max-records run ended"),
                        (Some(Sent::Term), _, _) => (false, "SIGTERM drain did not end with 0"),
                        (None, Some(0), _) => (false, "exited 0 by itself"),
                        _ => (false, "exited by itself"),
                    };
                    (text, ours, why.to_owned())
                }
            };
            s.exits.push(ExitRecord {
                label: spec.label.clone(),
                run,
                pid,
                at_s: started.elapsed().as_secs_f64(),
                status: text,
                ours,
                why,
            });
            if s.stopping {
                return;
            }
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

fn spawn(
    spec: &ConnectorSpec,
    extra: &[String],
    run: u32,
) -> anyhow::Result<tokio::process::Child> {
    use std::io::Write as _;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    writeln!(
        log,
        "===== chaos: {} run {run} at {} args {:?} =====",
        spec.label,
        chrono::Utc::now().format("%H:%M:%S%.3f"),
        extra
    )?;
    let err = log.try_clone()?;
    tokio::process::Command::new(&spec.bin)
        .args(&spec.args)
        .args(extra)
        .envs(spec.envs.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.bin.display()))
}
