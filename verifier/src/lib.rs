//! # verifier
//!
//! **Consumes** `uts.usage-jobs` (consumer group `uts-verifier`). For each usage it checks the
//! tenant rules of DESIGN.md §3 (payload tenant is the submitter, or an IoT tenant of that
//! operator with the application provisioned) and the active rule for (application, unit):
//! allowed user types, minimum and maximum value, integers only, and the accepted time window
//! relative to the job's receipt. See [`decide`].
//!
//! **Produces** the verified usages of each job to `uts.usages.verified`, one message per
//! (job, aggregation key), keyed by the aggregation key; one status event per job (ACCEPTED →
//! VERIFIED / NOVERIFICATION / VERIFICATIONFAILED counts per application and unit, validation
//! errors carrying the failing usages in the `users` shape) to `uts.status`, keyed by job id,
//! with the deterministic event id `verifier:<job id>`; undecodable jobs to `uts.dead-letter`.
//!
//! **Delivery:** at-least-once through the shared consumer runner. The decision for a job is
//! stored in PostgreSQL (`verifier_decisions`) before anything is produced, and offsets are
//! committed only after every production is acknowledged. A redelivered or re-submitted job
//! (same job id) is answered from the stored decision, so it yields exactly the same messages
//! even if rules changed meanwhile, and downstream dedup by (job, aggregation key) and event id
//! stays exact.
//!
//! **Failure modes:** PostgreSQL or Kafka unavailable → the batch is retried with backoff, never
//! skipped; a message that is not a `UsageJob` (or has no job id) → dead letter; SIGTERM → the
//! batch in hand is finished and its offsets committed.

pub mod catalog;
pub mod decide;
pub mod verdicts;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uts_common::config::{RetentionArgs, StageArgs};
use uts_common::kafka::{self, DurableProducer, Outgoing};
use uts_common::proto::{v1, Message};
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected, Runner};
use uts_common::trace::Carrier;

use crate::catalog::Catalog;
use crate::decide::{aggregation_key_text, judge};
use crate::verdicts::{assemble, Decision};

/// Consumer group of every verifier process.
pub const GROUP: &str = "uts-verifier";

/// Verifies accepted usages against tenants, provisioning and rules.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "verifier", version, about)]
pub struct Config {
    /// Kafka consumer group; every verifier process of one deployment shares it.
    #[arg(long = "consumer-group", env = "UTS_VERIFIER_GROUP", default_value = GROUP)]
    pub group: String,

    /// Make usages without an active rule fail verification instead of passing as
    /// NOVERIFICATION.
    #[arg(long = "require-rule", env = "UTS_REQUIRE_RULE", default_value_t = false)]
    pub require_rule: bool,

    /// How often rules, tenants and provisioning are re-read, in milliseconds.
    #[arg(long = "catalog-refresh-ms", env = "UTS_CATALOG_REFRESH_MS", default_value_t = 2000)]
    pub catalog_refresh_ms: u64,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub stage: StageArgs,
}

/// The runner's handler.
pub struct Verifier {
    pool: PgPool,
    producer: DurableProducer,
    verified_topic: String,
    status_topic: String,
    produce_timeout: Duration,
    require_rule: bool,
    refresh: Duration,
    /// The snapshot and when it was loaded; refreshed lazily at the start of a batch.
    catalog: Mutex<Option<(Arc<Catalog>, Instant)>>,
}

impl Verifier {
    async fn catalog(&self) -> anyhow::Result<Arc<Catalog>> {
        let mut slot = self.catalog.lock().await;
        if let Some((catalog, at)) = slot.as_ref() {
            if at.elapsed() < self.refresh {
                return Ok(catalog.clone());
            }
        }
        let catalog = Arc::new(Catalog::load(&self.pool).await.context("loading rules, tenants and provisioning")?);
        *slot = Some((catalog.clone(), Instant::now()));
        Ok(catalog)
    }

    /// The stored decision of each job, deciding and storing those that have none. One
    /// statement stores the whole batch's verdicts (`UNNEST`); the jobs it did not insert were
    /// decided before (a redelivery, a retry with the same Idempotency-Key, or another verifier
    /// racing on the same job: the conflict waits for its commit), and their stored verdicts
    /// are the ones produced, even if a rule changed meanwhile.
    async fn decisions(&self, jobs: &[&v1::UsageJob]) -> anyhow::Result<HashMap<String, Decision>> {
        let catalog = self.catalog().await?;
        let mut decided: HashMap<String, Decision> = HashMap::with_capacity(jobs.len());
        let (mut ids, mut blobs) = (Vec::with_capacity(jobs.len()), Vec::with_capacity(jobs.len()));
        for job in jobs {
            if decided.contains_key(&job.job_id) {
                continue; // the same job twice in one batch
            }
            let verdicts = judge(job, &catalog, self.require_rule);
            let decision = assemble(job, &verdicts).map_err(|err| anyhow::anyhow!("job {}: {err}", job.job_id))?;
            ids.push(job.job_id.clone());
            blobs.push(verdicts.encode_to_vec());
            decided.insert(job.job_id.clone(), decision);
        }
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO verifier_decisions (job_id, verdicts) SELECT * FROM UNNEST($1::text[], $2::bytea[])
             ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
        )
        .bind(&ids)
        .bind(&blobs)
        .fetch_all(&self.pool)
        .await
        .context("storing decisions")?;
        if inserted.len() < ids.len() {
            let inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();
            let earlier: Vec<&v1::UsageJob> =
                jobs.iter().copied().filter(|j| !inserted.contains(j.job_id.as_str())).collect();
            decided.extend(load_decisions(&self.pool, &earlier).await?);
        }
        Ok(decided)
    }
}

/// A stored decision: the job id, its verdicts, or (the earlier form) the whole decision.
#[derive(sqlx::FromRow)]
struct StoredDecision {
    job_id: String,
    verdicts: Option<Vec<u8>>,
    decision: Option<Vec<u8>>,
}

/// The stored decisions of `jobs`, rebuilt from their verdicts (or read whole, when stored in
/// the earlier form).
async fn load_decisions(pool: &PgPool, jobs: &[&v1::UsageJob]) -> anyhow::Result<HashMap<String, Decision>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let rows: Vec<StoredDecision> =
        sqlx::query_as("SELECT job_id, verdicts, decision FROM verifier_decisions WHERE job_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .context("reading stored decisions")?;
    let by_id: HashMap<&str, &v1::UsageJob> = jobs.iter().map(|j| (j.job_id.as_str(), *j)).collect();
    let mut decisions = HashMap::with_capacity(rows.len());
    for StoredDecision { job_id: id, verdicts, decision } in rows {
        let decision = match (verdicts, decision) {
            (Some(bytes), _) => {
                let verdicts = v1::VerifierVerdicts::decode(bytes.as_slice()).context("decoding stored verdicts")?;
                let job = by_id.get(id.as_str()).context("a stored decision of a job not asked for")?;
                // A job id always carries the same job; verdicts that do not fit mean the
                // table was written by something else, and guessing would produce wrong counts.
                assemble(job, &verdicts).map_err(|err| anyhow::anyhow!("stored verdicts of job {id}: {err}"))?
            }
            (None, Some(bytes)) => Decision::from_proto(
                v1::VerifierDecision::decode(bytes.as_slice()).context("decoding a stored decision")?,
            ),
            (None, None) => anyhow::bail!("job {id} has a stored decision without content"),
        };
        decisions.insert(id, decision);
    }
    Ok(decisions)
}

impl Handler for Verifier {
    type Item = v1::UsageJob;

    fn decode(&self, _topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<v1::UsageJob, String> {
        let job: v1::UsageJob = decode_proto(payload)?;
        if job.job_id.is_empty() {
            return Err("usage job without job_id".into());
        }
        if job.submitter_tenant.is_empty() {
            return Err("usage job without submitter_tenant".into());
        }
        // Decisions are relative to the received time; the gateway always sets it.
        if job.received_at.as_ref().and_then(uts_common::domain::from_timestamp).is_none() {
            return Err("usage job without a valid received_at".into());
        }
        Ok(job)
    }

    async fn handle(&self, batch: &[Decoded<v1::UsageJob>]) -> anyhow::Result<Vec<Rejected>> {
        // Jobs are independent (nothing downstream depends on the order of two jobs), so the
        // batch is verified in chunks at once: each chunk's statement and its wait for the
        // brokers overlap the others'. The offsets are stored when every chunk succeeded.
        let mut chunks = Vec::new();
        for chunk in batch.chunks(CHUNK) {
            chunks.push(self.verify(chunk));
        }
        for result in futures::future::join_all(chunks).await {
            result?;
        }
        let usages: u64 = batch.iter().map(|d| u64::from(d.item.usages_count)).sum();
        metrics::counter!("uts_verifier_usages_total").increment(usages);
        Ok(Vec::new())
    }
}

/// Jobs verified together (one statement, one wait for the brokers); a batch's chunks run at
/// once. The benchmark found the verifier waiting, not computing: a third of a core at most.
const CHUNK: usize = 64;

impl Verifier {
    /// Decides (or finds the stored decision of) `jobs` and produces the outcome, each job's
    /// messages with its trace context.
    async fn verify(&self, chunk: &[Decoded<v1::UsageJob>]) -> anyhow::Result<()> {
        let jobs: Vec<&v1::UsageJob> = chunk.iter().map(|d| &d.item).collect();
        let traces: HashMap<&str, &Carrier> =
            chunk.iter().filter_map(|d| Some((d.item.job_id.as_str(), d.trace.as_ref()?))).collect();
        let decisions = self.decisions(&jobs).await?;
        let mut sends = Vec::new();
        for decision in decisions.values() {
            let trace = traces.get(decision.status.job_id.as_str()).copied();
            for verified in &decision.batches {
                let key = verified.key.as_ref().map(aggregation_key_text).unwrap_or_default();
                sends.push((self.verified_topic.as_str(), key, verified.encode_to_vec(), trace));
            }
            let status = decision.status.encode_to_vec();
            sends.push((self.status_topic.as_str(), decision.status.job_id.clone(), status, trace));
        }
        let messages: Vec<Outgoing<'_>> = sends
            .iter()
            .map(|(topic, key, payload, trace)| Outgoing::new(topic, key.as_bytes(), payload, *trace))
            .collect();
        kafka::produce_all_durably(&self.producer, &messages, self.produce_timeout)
            .await
            .context("producing verified usages and status events")
    }
}

/// Runs the verifier with `pool` until `shutdown`.
pub async fn run_with_pool(config: Config, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = config.stage.kafka.topics();
    let runner = Runner::new(&config.stage.kafka, v1::Stage::Verifier, &config.group, &[&topics.usage_jobs])?;
    let handler = Verifier {
        pool: pool.clone(),
        producer: uts_common::runner::handler_producer(&config.stage.kafka)?,
        verified_topic: topics.usages_verified,
        status_topic: topics.status,
        produce_timeout: config.stage.kafka.produce_timeout(),
        require_rule: config.require_rule,
        refresh: Duration::from_millis(config.catalog_refresh_ms),
        catalog: Mutex::new(None),
    };
    tracing::info!(group = %config.group, require_rule = config.require_rule, "verifier consuming");
    let pruned = Some((uts_common::db::DedupTable::VerifierDecisions, config.retention.days));
    runner.run_stage(handler, pool, config.stage.admin.addr, pruned, shutdown).await
}

/// The binary's entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = uts_common::runner::start(&config.stage, v1::Stage::Verifier).await?;
    run_with_pool(config, pool, shutdown).await
}
