//! `utsctl`: the operator's command line. Runs the migrations as their own step, creates the
//! Kafka topics, mints local HS256 tokens, registers tenants, shows a job's status from the
//! topic, and lists and replays dead letters.

mod dead_letters;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use uts_common::config::{DatabaseArgs, KafkaArgs};
use uts_common::domain::TenantType;

use uts_common::proto::{v1, Message};
use uts_common::status::Board;
use uts_common::{auth, db, kafka, tenants};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the pending PostgreSQL migrations.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Create the Kafka topics that are missing.
    Topics {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Print an HS256 bearer token for local use.
    Token {
        /// The shared secret the services verify with.
        #[arg(long, env = "UTS_JWT_HS256_SECRET", hide_env_values = true)]
        secret: String,
        /// Tenant claim `ten`.
        #[arg(long)]
        tenant: String,
        /// User claim (`user_name` and `sub`).
        #[arg(long, default_value = "")]
        user: String,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "uts.su")]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
    },
    /// Show a job's usages per status, folded from the `uts.status` topic itself (what the query
    /// service's GET /usagesJobs/{id} shows, without the query service).
    Status {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The job id.
        #[arg(long)]
        job: String,
    },
    /// List the dead letters (messages a stage could not use, with the reason), or put one back
    /// on its topic with --replay once the cause is fixed.
    DeadLetters {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Replay the letter from this source topic (with --partition and --offset).
        #[arg(long, requires_all = ["partition", "offset"])]
        replay: Option<String>,
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        offset: Option<i64>,
    },
    /// Register or update a tenant.
    Tenant {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Tenant id.
        #[arg(long)]
        id: String,
        /// developer, operator, iot or customer.
        #[arg(long = "type")]
        tenant_type: String,
        /// The operator of an IoT tenant.
        #[arg(long)]
        operator: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { database } => {
            let pool = db::connect(&database).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Topics { kafka: args } => {
            let topics = args.topics();
            kafka::ensure_topics(&args, &topics).await?;
            println!("topics ready: {}", topics.all().join(", "));
        }
        Command::Token { secret, tenant, user, scopes, ttl_seconds } => {
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            println!("{}", auth::mint_hs256(&secret, &tenant, &user, &scopes, ttl_seconds)?);
        }
        Command::Status { kafka: args, job } => {
            let messages = kafka::read_topic_to_end(&args, &args.topics().status, Duration::from_secs(30)).await;
            let mut board = Board::default();
            for (key, payload) in messages {
                if key == job.as_bytes() {
                    board.apply(&v1::StatusEvent::decode(payload.as_slice()).context("decoding a status event")?);
                }
            }
            println!("job {job}");
            for ((application, unit, status), count) in &board.counts {
                if *count != 0 {
                    println!("  {application} / {unit}: {count} {status}");
                }
            }
            for error in &board.errors {
                println!("  error {}: {}", error.code, error.message);
            }
        }
        Command::DeadLetters { kafka: args, replay, partition, offset } => match (replay, partition, offset) {
            (Some(topic), Some(partition), Some(offset)) => {
                let letter = dead_letters::replay(&args, &topic, partition, offset).await?;
                println!("replayed: {}", dead_letters::describe(&letter));
            }
            _ => {
                let letters = dead_letters::read(&args).await?;
                for letter in &letters {
                    println!("{}", dead_letters::describe(letter));
                }
                println!("{} dead letter(s) in {}", letters.len(), args.topics().dead_letter);
            }
        },
        Command::Tenant { database, id, tenant_type, operator } => {
            let tenant_type: TenantType =
                tenant_type.parse().ok().context("--type must be developer, operator, iot or customer")?;
            let pool = db::connect(&database).await?;
            let tenant = tenants::Tenant { tenant_id: id, tenant_type, operator_tenant_id: operator };
            tenants::upsert(&pool, &tenant).await.context("saving the tenant")?;
            println!("tenant {} registered as {}", tenant.tenant_id, tenant.tenant_type.as_str());
        }
    }
    Ok(())
}
