//! The host of a consumer stage: the one way the verifier, the aggregator and the
//! billing-forwarder run their consumer with its admin listener and its dedup pruner.

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Handler, Runner};
use crate::config::StageArgs;
use crate::db::DedupTable;
use crate::proto::v1;

/// A stage process's start: its telemetry (logs, metrics, traces under the stage's
/// [process name](crate::domain::wire::process_name)), then its pool.
pub async fn start(args: &StageArgs, stage: v1::Stage) -> anyhow::Result<PgPool> {
    crate::telemetry::init(&args.telemetry, crate::domain::wire::process_name(stage));
    crate::db::connect(&args.database).await
}

impl Runner {
    /// Serves the admin listener on `admin` (`/healthz`, `/readyz`, `/metrics`; ready while
    /// Kafka and PostgreSQL answer and this consumer is live), prunes the dedup table `pruned`
    /// names after its retention days, if the stage has one, and runs the consumer with
    /// `handler` until `shutdown`. A consumer that fails (or an admin listener that cannot bind)
    /// cancels `shutdown`, so every other task of the process stops and the process exits
    /// non-zero.
    pub async fn run_stage<H: Handler>(
        self,
        handler: H,
        pool: PgPool,
        admin: SocketAddr,
        pruned: Option<(DedupTable, u32)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let database = crate::admin::kafka_and_database(Some(self.producer.clone()), pool.clone());
        let ready = crate::admin::with_consumer(database, self.liveness.clone());
        let metrics = crate::telemetry::metrics_handle();
        let admin_task = match crate::admin::serve(admin, metrics, ready, shutdown.clone()).await {
            Ok((_, task)) => task,
            Err(err) => {
                // The process's other tasks stop too.
                shutdown.cancel();
                return Err(err);
            }
        };
        let pruner = pruned.map(|(table, days)| crate::db::spawn_pruner(pool, table, days, shutdown.clone()));
        let consuming = self.run(handler, shutdown.clone());
        let result = crate::shutdown::stopping_the_rest("the consumer", shutdown, consuming).await;
        let _ = admin_task.await;
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        result
    }
}
