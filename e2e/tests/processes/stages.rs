//! Stage processes for the tests that run the real binaries.

use std::net::TcpListener;
use std::path::PathBuf;

use clap::Parser;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::domain::TenantType;
use uts_common::tenants::{self, Tenant};

pub use uts_testkit::SECRET;

pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/processes-… → target/<profile>/<name>
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

pub struct Stage {
    pub name: &'static str,
    pub args: Vec<String>,
    /// The admin listener's port (`/readyz`, `/metrics`).
    pub admin_port: u16,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub kills: usize,
}

impl Stage {
    /// A stage (not started yet) with `args` and `env`; its admin listener gets a port of its
    /// own unless `args` name one (`--admin-addr=127.0.0.1:PORT`).
    pub fn new(name: &'static str, mut args: Vec<String>, env: &[(String, String)]) -> Self {
        let given = args.iter().find_map(|arg| arg.strip_prefix("--admin-addr=127.0.0.1:")?.parse().ok());
        let admin_port = given.unwrap_or_else(|| {
            let port = free_port();
            args.push(format!("--admin-addr=127.0.0.1:{port}"));
            port
        });
        Self { name, args, admin_port, env: env.to_vec(), child: None, kills: 0 }
    }

    pub fn spawn(&mut self) {
        let mut command = Command::new(binary(self.name));
        command.args(&self.args).envs(self.env.iter().cloned()).kill_on_drop(true);
        self.child = Some(command.spawn().unwrap());
    }

    /// SIGKILL, and waits until it is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        self.kills += 1;
    }

    pub async fn kill_and_restart(&mut self) {
        self.kill().await;
        self.spawn();
    }

    /// How it ended, if it did (a stage must survive its dependencies' faults).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().unwrap())
    }

    /// SIGTERM, then waits up to `patience` for it to exit: its exit status, or `None` if it
    /// was still running (then it is killed).
    pub async fn terminate(&mut self, patience: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id()?.to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        match tokio::time::timeout(patience, child.wait()).await {
            Ok(status) => Some(status.unwrap()),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{database}")
}

/// Ports the stages of these tests listen on: below the kernel's ephemeral range, so that no
/// client socket (of this or any process) can be given one between [`free_port`]'s check and
/// the stage's own bind. Binding port 0 and dropping the listener had exactly that race.
const STAGE_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// A free port of [`STAGE_PORTS`] for a stage process to listen on; each at most once per test
/// process (a counter from a random start, so that two test processes rarely meet).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    if let [low, high] = ephemeral.split_whitespace().filter_map(|p| p.parse::<u16>().ok()).collect::<Vec<_>>()[..] {
        assert!(
            high < STAGE_PORTS.start || low >= STAGE_PORTS.end,
            "the ephemeral port range {low}-{high} overlaps the stage ports {STAGE_PORTS:?}"
        );
    }
    let next = NEXT.get_or_init(|| AtomicU32::new(uuid::Uuid::new_v4().as_u128() as u32));
    let size = u32::from(STAGE_PORTS.end - STAGE_PORTS.start);
    for _ in 0..size {
        let port = STAGE_PORTS.start + (next.fetch_add(1, Ordering::Relaxed) % size) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {STAGE_PORTS:?}");
}

/// The environment of every stage process: the test's topics, database and billing receiver,
/// quick retries and rounds, errors-only logs.
pub fn environment(kafka: &KafkaArgs, database_url: &str, billing_url: &str) -> Vec<(String, String)> {
    vec![
        ("UTS_KAFKA_BROKERS".to_owned(), kafka.brokers.clone()),
        ("UTS_TOPIC_PREFIX".to_owned(), kafka.topic_prefix.clone()),
        // The broker's smallest session: a killed consumer's partitions move on after 6 s.
        ("UTS_KAFKA_PROPERTIES".to_owned(), "session.timeout.ms=6000".to_owned()),
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("UTS_JWT_HS256_SECRET".to_owned(), SECRET.to_owned()),
        ("UTS_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("UTS_DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
        ("RUST_LOG".to_owned(), "error".to_owned()),
        ("UTS_VERIFIER_GROUP".to_owned(), format!("v-{}", kafka.topic_prefix)),
        ("UTS_AGGREGATOR_GROUP".to_owned(), format!("a-{}", kafka.topic_prefix)),
        ("UTS_BILLING_FORWARDER_GROUP".to_owned(), format!("b-{}", kafka.topic_prefix)),
        ("UTS_QUERY_GROUP".to_owned(), format!("q-{}", kafka.topic_prefix)),
        ("UTS_BILLING_URL".to_owned(), billing_url.to_owned()),
        ("UTS_BILLING_RECEIPTS_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("UTS_BILLING_SEND_INTERVAL_MS".to_owned(), "100".to_owned()),
        ("UTS_BILLING_RETRY_BASE_MS".to_owned(), "200".to_owned()),
        ("UTS_BILLING_REQUEST_TIMEOUT_MS".to_owned(), "2000".to_owned()),
        ("UTS_CATALOG_REFRESH_MS".to_owned(), "500".to_owned()),
        // The test reads every job back: hundreds of GETs in a few seconds.
        ("UTS_QUERY_RATE_LIMIT_PER_SECOND".to_owned(), "0".to_owned()),
    ]
}

/// Tenants `op` (operator, the submitter) and `prov` (developer), and `prov`'s billed rule for
/// (`app`, `unit`).
pub async fn seed(pool: &PgPool, unit: &str) {
    for (id, kind) in [("op", TenantType::Operator), ("prov", TenantType::Developer)] {
        tenants::upsert(pool, &Tenant { tenant_id: id.into(), tenant_type: kind, operator_tenant_id: None })
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO rules (application, unit, owner_tenant_id, billing_enabled) VALUES ('app', $1, 'prov', true)",
    )
    .bind(unit)
    .execute(pool)
    .await
    .unwrap();
}

/// The reference billing receiver, in the test's process: its records URL and its stop token.
pub async fn billing_receiver() -> (String, CancellationToken) {
    let shutdown = CancellationToken::new();
    let receiver = billing_receiver::Application::build(billing_receiver::Config::parse_from([
        "billing-receiver",
        "--listen-addr=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
    ]))
    .await
    .unwrap();
    let url = format!("http://{}/billing/v1/records", receiver.local_addr());
    tokio::spawn(receiver.run_until_stopped(shutdown.clone()));
    (url, shutdown)
}

/// One process each of the gateway (its reads forwarded to the query service: the one
/// address), the verifier, the aggregator, the billing-forwarder and the query service, then
/// those of `more` (name, flags), all with `env`, each with an admin port of its own.
pub struct Stages {
    pub stages: Vec<Stage>,
    /// The gateway's and the query service's listening ports.
    pub port: u16,
    pub query_port: u16,
}

impl Stages {
    /// Starts them and waits until every one answers `/readyz` with 200, so that a test's load
    /// meets a pipeline that is up, not one still joining its consumer groups.
    pub async fn start(env: &[(String, String)], more: &[(&'static str, Vec<String>)]) -> Self {
        let (port, query_port) = (free_port(), free_port());
        let stage = |name: &'static str, args: Vec<String>| Stage::new(name, args, env);
        let gateway = vec![
            format!("--listen-addr=127.0.0.1:{port}"),
            format!("--query-service-url=http://127.0.0.1:{query_port}"),
        ];
        let mut stages = vec![
            stage("ingest-gateway", gateway),
            stage("verifier", vec![]),
            stage("aggregator", vec![]),
            stage("billing-forwarder", vec![]),
            stage("query-service", vec![format!("--listen-addr=127.0.0.1:{query_port}")]),
        ];
        stages.extend(more.iter().map(|(name, args)| stage(name, args.clone())));
        for stage in &mut stages {
            stage.spawn();
        }
        for stage in &stages {
            until_ready(stage.admin_port, stage.name, true).await;
        }
        Self { stages, port, query_port }
    }

    /// Stages that exited (none may: a fault of a dependency is ridden out, not fatal).
    pub fn exited(&mut self) -> Vec<String> {
        self.stages.iter_mut().filter_map(|s| s.exited().map(|status| format!("{} {status}", s.name))).collect()
    }

    /// SIGTERM to every stage: each must finish what it has in hand and exit 0 within 30 s.
    pub async fn terminate(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for stage in &mut self.stages {
            match stage.terminate(std::time::Duration::from_secs(30)).await {
                Some(status) if status.success() => {}
                Some(status) => failures.push(format!("{} exited {status} on SIGTERM", stage.name)),
                None => failures.push(format!("{} still ran 30 s after SIGTERM", stage.name)),
            }
        }
        failures
    }

    pub async fn stop(&mut self) {
        for stage in &mut self.stages {
            stage.stop().await;
        }
    }
}

/// `/readyz` of the admin listener on `port`: its status and body.
pub async fn readyz(port: u16) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.unwrap_or_default()))
}

/// Waits (90 s at most) until `/readyz` on `port` answers 200 (`ready`) or not; its last body.
pub async fn until_ready(port: u16, what: &str, ready: bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        if let Some((status, body)) = readyz(port).await {
            if (status == 200) == ready {
                return body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: /readyz never answered {}",
            if ready { 200 } else { 503 }
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
