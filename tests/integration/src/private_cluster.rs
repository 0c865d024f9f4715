//! A private cluster for tests that break things: its own Kafka broker (KRaft, one process), its
//! own S3 server (`s3s-fs`) and its own forms API, on free ports of 127.0.0.1, with their state
//! under one directory of the caller's. Never the shared cluster of `make cluster-up`
//! (9092/9000/8000/8001), which other tests use at the same time.
//!
//! Each service is a child process of the caller ([`Service`]) that it may kill (`SIGKILL`),
//! stop (`SIGSTOP`), continue (`SIGCONT`) and start again on the same port and directory:
//!
//! ```ignore
//! let dir = workspace_root().join("target/it").join(unique_name("broker-restart"));
//! let mut kafka = PrivateKafka::start(&dir.join("kafka"), free_port(), free_port()).await?;
//! kafka.create_topic("in", 3).await?;
//! // … start a connector with `brokers: {kafka.bootstrap()}` …
//! kafka.restart().await?; // kill -9, then the same port and log directory again
//! ```
//!
//! What they need is installed by `make deps` (`.cache/kafka/libs`, `.cache/tools/bin/s3s-fs`)
//! and `cargo build --release -p forms-api`. Every process is killed when its handle is dropped;
//! each one's pid is also written to `{dir}/{name}.pid` (with the command line holding `dir`), so
//! a run that was itself killed can be cleaned up after.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::{base_config, free_port, http_client, release_bin, wait_until, workspace_root};

/// How long a service gets to answer after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// One process

/// A restartable child process: a program, its arguments and environment, and a log file that
/// every start appends to (with a header line naming the start).
#[derive(Debug)]
pub struct Service {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    pid_file: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Service {
    /// A service called `name` (its log is `{dir}/{name}.log`, its pid file `{dir}/{name}.pid`),
    /// not started yet.
    pub fn new(name: &str, dir: &Path, program: &Path, args: Vec<OsString>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            envs: Vec::new(),
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            child: None,
            starts: 0,
        }
    }

    /// Adds an environment variable for the next starts.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Starts it (fails if it is running).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        if let Some(d) = self.log.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.starts += 1;
        writeln!(
            log,
            "===== {} start #{} of {} =====",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.starts,
            self.name
        )?;
        let err = log.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        std::fs::write(&self.pid_file, format!("{}\n", child.id()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid while it runs (or is stopped); `None` once it has exited.
    pub fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// Whether the process is alive (running or stopped). Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The exit status if it exited since the last start (reaped), `None` while it runs.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Sends `signal` (a name `kill` knows: `KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        send_signal(pid, signal)
    }

    /// `kill -9` and reap (a crash). Nothing happens if it is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if c.try_wait()?.is_none() {
                c.kill().with_context(|| format!("killing {}", self.name))?;
            }
            c.wait()?;
        }
        Ok(())
    }

    /// `kill -STOP`: the process freezes (its sockets stay open, nothing answers).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// `kill -CONT` after [`Service::stop`].
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// `SIGTERM`, then waits at most `timeout` for the exit; past it, `SIGKILL` and an error.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.kill()?;
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `kill -SIGNAL pid`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Waits until `ready` answers `true`; fails at once if `service` exits, or after `timeout`.
async fn wait_service<F, Fut>(
    service: &mut Service,
    timeout: Duration,
    what: &str,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(st) = service.try_exit()? {
            bail!(
                "{} exited ({st}) before {what}; see {}",
                service.name(),
                service.log_path().display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready after {timeout:?} ({what}); see {}",
                service.name(),
                service.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// The Kafka jars `make deps` installs.
pub fn kafka_libs() -> PathBuf {
    workspace_root().join(".cache/kafka/libs")
}

/// A single-process KRaft Kafka broker (broker and controller) on 127.0.0.1, with the settings
/// of `tests/cluster/up.sh` (one replica everywhere, no topic auto-creation).
#[derive(Debug)]
pub struct PrivateKafka {
    /// Client port.
    pub port: u16,
    /// Controller port.
    pub controller_port: u16,
    dir: PathBuf,
    service: Service,
}

impl PrivateKafka {
    /// Formats `dir` on first use, starts the broker and waits until it answers metadata
    /// requests.
    pub async fn start(dir: &Path, port: u16, controller_port: u16) -> anyhow::Result<Self> {
        let libs = kafka_libs();
        if !libs.is_dir() {
            bail!("{} is missing: run `make deps`", libs.display());
        }
        std::fs::create_dir_all(dir.join("data"))?;
        let conf = dir.join("server.properties");
        std::fs::write(&conf, server_properties(dir, port, controller_port))?;
        if !dir.join("data/meta.properties").is_file() {
            format_storage(dir, &conf)?;
        }
        let classpath = format!("{}/*", libs.display());
        let log4j = workspace_root().join("tests/cluster/log4j2-broker.properties");
        let args: Vec<OsString> = [
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ]
        .iter()
        .map(OsString::from)
        .chain([
            OsString::from(format!("-Dlog4j2.configurationFile={}", log4j.display())),
            OsString::from("-cp"),
            OsString::from(classpath),
            OsString::from("kafka.Kafka"),
            conf.into_os_string(),
        ])
        .collect();
        let service = Service::new("kafka", dir, Path::new("java"), args);
        let mut kafka = Self {
            port,
            controller_port,
            dir: dir.to_owned(),
            service,
        };
        kafka.start_again().await?;
        Ok(kafka)
    }

    /// `127.0.0.1:{port}`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process (pid, log, signals).
    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    /// `kill -9` of the broker (it stays down until [`PrivateKafka::start_again`]).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.service.kill()
    }

    /// `kill -STOP` of the broker.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.service.stop()
    }

    /// `kill -CONT` of the broker.
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.service.cont()
    }

    /// Starts the broker again on the same ports and log directory and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        // A killed broker's ports are free at once; wait for them anyway (a slow exit).
        let (p, c) = (self.port, self.controller_port);
        wait_until(
            Duration::from_secs(30),
            "the broker's ports to be free",
            || std::future::ready(!port_open(p) && !port_open(c)),
        )
        .await?;
        self.service.start()?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// `kill -9`, then [`PrivateKafka::start_again`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.start_again().await
    }

    /// Waits until the broker answers a metadata request (fails at once if it exited).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let bootstrap = self.bootstrap();
        wait_service(&mut self.service, timeout, "a metadata answer", || {
            let b = bootstrap.clone();
            async move {
                tokio::task::spawn_blocking(move || broker_answers(&b))
                    .await
                    .unwrap_or(false)
            }
        })
        .await
    }

    /// Creates `topic` (replication 1) and waits until every partition has a leader.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        create_topic_at(&self.bootstrap(), topic, partitions).await
    }
}

fn server_properties(dir: &Path, port: u16, controller_port: u16) -> String {
    format!(
        "# Written by form_etl_tests::private_cluster on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
",
        data = dir.join("data").display()
    )
}

/// `kafka-storage format` with a fresh cluster id (a base64url UUID that does not start with
/// `-`, which the tool's argument parser would read as an option).
fn format_storage(dir: &Path, conf: &Path) -> anyhow::Result<()> {
    let id = loop {
        let bytes: [u8; 16] = rand::random();
        let id = base64url(&bytes);
        if !id.starts_with('-') {
            break id;
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("format.log"))?;
    let err = log.try_clone()?;
    let log4j = workspace_root().join("tests/cluster/log4j2-tools.properties");
    let status = Command::new("java")
        .args([
            "-Xms64m",
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .args(["kafka.tools.StorageTool", "format", "-t", &id, "-c"])
        .arg(conf)
        .arg("--ignore-formatted")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .status()
        .context("running kafka.tools.StorageTool")?;
    if !status.success() {
        bail!(
            "formatting the Kafka storage failed ({status}); see {}",
            dir.join("format.log").display()
        );
    }
    Ok(())
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn broker_answers(bootstrap: &str) -> bool {
    let admin: Result<AdminClient<DefaultClientContext>, _> = base_config(bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000")
        .create();
    admin.is_ok_and(|a| {
        a.inner()
            .fetch_metadata(None, Duration::from_secs(3))
            .is_ok_and(|md| !md.brokers().is_empty())
    })
}

/// Creates `topic` (replication 1) on the brokers at `bootstrap` and waits until every
/// partition has a leader.
pub async fn create_topic_at(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
        .create()
        .context("creating the Kafka admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("creating topic {t}: {code}"))?;
    }
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    wait_until(
        Duration::from_secs(30),
        &format!("topic {topic} with {partitions} led partitions"),
        || {
            let (b, t) = (b.clone(), t.clone());
            async move {
                tokio::task::spawn_blocking(move || led_partitions(&b, &t))
                    .await
                    .ok()
                    .flatten()
                    == Some(partitions as usize)
            }
        },
    )
    .await
}

fn led_partitions(bootstrap: &str, topic: &str) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap).create().ok()?;
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().first()?;
    if t.error().is_some() {
        return None;
    }
    Some(t.partitions().iter().filter(|p| p.leader() >= 0).count())
}

// ---------------------------------------------------------------------------------------------
// S3

/// `s3s-fs` as `make deps` installs it.
pub fn s3s_fs_bin() -> PathBuf {
    workspace_root().join(".cache/tools/bin/s3s-fs")
}

/// An `s3s-fs` server on 127.0.0.1 serving the buckets under `root` (one directory each).
#[derive(Debug)]
pub struct PrivateS3 {
    /// Its port.
    pub port: u16,
    /// The directory it serves.
    pub root: PathBuf,
    /// Access key id.
    pub access_key: String,
    secret_key: String,
    service: Service,
}

impl PrivateS3 {
    /// Starts it on `port` over `root` (logs in `log_dir`) and waits until it answers HTTP.
    pub async fn start(
        root: &Path,
        log_dir: &Path,
        port: u16,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<Self> {
        let bin = s3s_fs_bin();
        if !bin.is_file() {
            bail!("{} is missing: run `make deps`", bin.display());
        }
        std::fs::create_dir_all(root)?;
        std::fs::create_dir_all(log_dir)?;
        let args: Vec<OsString> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string().into(),
            "--access-key".into(),
            access_key.into(),
            "--secret-key".into(),
            secret_key.into(),
            root.as_os_str().to_owned(),
        ];
        let service = Service::new("s3", log_dir, &bin, args);
        let mut s3 = Self {
            port,
            root: root.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            service,
        };
        s3.up().await?;
        Ok(s3)
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The secret key (give it to the code under test, never print it).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The process (pid, log, signals).
    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    /// An aws-sdk-s3 client for it: path-style, its credentials, region us-east-1.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "private-cluster",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_s3::config::Region::new(crate::S3_REGION))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// `kill -9` (down until [`PrivateS3::up`]).
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.service.kill()
    }

    /// Starts it (again) on the same port and directory and waits until it answers.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        wait_until(Duration::from_secs(30), "the S3 port to be free", || {
            std::future::ready(!port_open(port))
        })
        .await?;
        self.service.start()?;
        let url = self.endpoint();
        let client = http_client();
        wait_service(&mut self.service, READY_TIMEOUT, "an HTTP answer", || {
            let req = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move { req.await.is_ok() }
        })
        .await
    }

    /// `kill -STOP`.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.service.stop()
    }

    /// `kill -CONT`.
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.service.cont()
    }

    /// Creates `bucket` (fails if it exists).
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        crate::create_bucket(&self.client(), bucket).await
    }
}

// ---------------------------------------------------------------------------------------------
// Forms API

/// The forms API test server (`target/release/forms-api`, or `bin`) on two free ports.
#[derive(Debug)]
pub struct PrivateFormsApi {
    /// API port.
    pub port: u16,
    /// Admin port (`/faults`, `/stats`, `/reset`).
    pub admin_port: u16,
    service: Service,
}

impl PrivateFormsApi {
    /// Starts `forms-api --forms-dir DIR --generate N --seed S` (binary `bin`, default
    /// `target/release/forms-api`) and waits until `/health` answers on both ports.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        bin: Option<&Path>,
        log_dir: &Path,
        port: u16,
        admin_port: u16,
        forms_dir: &Path,
        generate: u64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let bin = bin
            .map(Path::to_owned)
            .unwrap_or_else(|| release_bin("forms-api"));
        if !bin.is_file() {
            bail!(
                "{} is missing: run `cargo build --release -p forms-api`",
                bin.display()
            );
        }
        let args: Vec<OsString> = vec![
            "--port".into(),
            port.to_string().into(),
            "--admin-port".into(),
            admin_port.to_string().into(),
            "--forms-dir".into(),
            forms_dir.as_os_str().to_owned(),
            "--generate".into(),
            generate.to_string().into(),
            "--seed".into(),
            seed.to_string().into(),
        ];
        let service = Service::new("forms-api", log_dir, &bin, args).env("RUST_LOG", "warn");
        let mut api = Self {
            port,
            admin_port,
            service,
        };
        api.up().await?;
        Ok(api)
    }

    /// `http://127.0.0.1:{port}`.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:{admin_port}`.
    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The process (pid, log, signals).
    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    /// `kill -9`.
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.service.kill()
    }

    /// Starts it (again) on the same ports and waits for `/health` on both.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let (p, a) = (self.port, self.admin_port);
        wait_until(
            Duration::from_secs(30),
            "the forms API ports to be free",
            || std::future::ready(!port_open(p) && !port_open(a)),
        )
        .await?;
        self.service.start()?;
        let (api, admin) = (
            format!("{}/health", self.api()),
            format!("{}/faults", self.admin()),
        );
        let client = http_client();
        wait_service(
            &mut self.service,
            READY_TIMEOUT,
            "/health and /faults",
            || {
                let a = client.get(&api).timeout(Duration::from_secs(2)).send();
                let b = client.get(&admin).timeout(Duration::from_secs(2)).send();
                async move {
                    a.await.is_ok_and(|r| r.status().is_success())
                        && b.await.is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await
    }

    /// `PUT /faults` (see docs/internals.md).
    pub async fn set_faults(&self, faults: serde_json::Value) -> anyhow::Result<()> {
        crate::set_forms_faults(&self.admin(), faults).await
    }
}

// ---------------------------------------------------------------------------------------------
// All three

/// Ports of a private cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Kafka clients.
    pub kafka: u16,
    /// Kafka controller.
    pub controller: u16,
    /// S3.
    pub s3: u16,
    /// Forms API.
    pub api: u16,
    /// Forms API admin.
    pub admin: u16,
}

impl Ports {
    /// Five free ports of 127.0.0.1 (bound, then released).
    pub fn free() -> Self {
        let mut seen = std::collections::BTreeSet::new();
        let mut next = || loop {
            let p = free_port();
            if seen.insert(p) {
                return p;
            }
        };
        Self {
            kafka: next(),
            controller: next(),
            s3: next(),
            api: next(),
            admin: next(),
        }
    }
}

/// What a private cluster is started with.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Fixture forms served by the API (`{id}.json` files).
    pub forms_dir: PathBuf,
    /// Generated forms (`form-000000` …).
    pub generate: u64,
    /// Generator seed.
    pub seed: u64,
    /// S3 access key id.
    pub s3_access_key: String,
    /// S3 secret key.
    pub s3_secret_key: String,
    /// The forms API binary (default `target/release/forms-api`).
    pub forms_api_bin: Option<PathBuf>,
}

/// A broker, an S3 server and a forms API of one's own, state under `dir`
/// (`dir/kafka`, `dir/s3`, `dir/forms-api.log`).
#[derive(Debug)]
pub struct PrivateCluster {
    /// The state directory.
    pub dir: PathBuf,
    /// The broker.
    pub kafka: PrivateKafka,
    /// The S3 server.
    pub s3: PrivateS3,
    /// The forms API.
    pub forms_api: PrivateFormsApi,
}

impl PrivateCluster {
    /// Starts the three (Kafka last: it takes longest) and waits until each answers.
    pub async fn start(dir: &Path, ports: Ports, opts: &ClusterOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let s3 = PrivateS3::start(
            &dir.join("s3"),
            dir,
            ports.s3,
            &opts.s3_access_key,
            &opts.s3_secret_key,
        )
        .await?;
        let forms_api = PrivateFormsApi::start(
            opts.forms_api_bin.as_deref(),
            dir,
            ports.api,
            ports.admin,
            &opts.forms_dir,
            opts.generate,
            opts.seed,
        )
        .await?;
        let kafka = PrivateKafka::start(&dir.join("kafka"), ports.kafka, ports.controller).await?;
        Ok(Self {
            dir: dir.to_owned(),
            kafka,
            s3,
            forms_api,
        })
    }

    /// The `FORM_ETL_*` variables that point this crate's helpers (e.g. [`crate::consume_to_end`],
    /// [`crate::create_topic`]) at this cluster, for a child process's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("FORM_ETL_KAFKA".into(), self.kafka.bootstrap()),
            ("FORM_ETL_S3_ENDPOINT".into(), self.s3.endpoint()),
            ("FORM_ETL_FORMS_API".into(), self.forms_api.api()),
            ("FORM_ETL_FORMS_ADMIN".into(), self.forms_api.admin()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_encodes_without_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 16]).len(), 22);
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = Ports::free();
        let all = [p.kafka, p.controller, p.s3, p.api, p.admin];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), 5);
    }
}
