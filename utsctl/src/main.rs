//! `utsctl`: the operator's command line. Runs the migrations as their own step, creates the
//! Kafka topics, mints local HS256 tokens, registers tenants, manages the token service's
//! clients and signing keys (the same rules as the admin API: `uts_common::tokens`; this is how
//! the first client is made before any token exists), shows a job's status from the topic, and
//! lists and replays dead letters.

mod api;
mod dead_letters;
mod send;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use uts_common::config::{DatabaseArgs, KafkaArgs};
use uts_common::domain::{format_datetime, TenantType};

use uts_common::proto::{v1, Message};
use uts_common::status::Board;
use uts_common::{auth, db, kafka, tenants, tokens};

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
    /// Register or replace a tenant, with the checks of PUT /admin/tenants/{tenantId}.
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
        /// A name to show.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Post usages from an NDJSON or CSV file (or stdin) as jobs of at most 200, follow them to
    /// a settled status and print a summary; sending the same input twice counts it once.
    Send(send::SendArgs),
    /// Follow a job, or list its errors, through the API.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Manage the token service's clients (client-credentials grant at /oauth/token).
    Clients {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        action: ClientAction,
    },
    /// List or rotate the token service's signing keys.
    SigningKeys {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// Print the job's status as it changes until it settled.
    Follow {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
        #[command(flatten)]
        api: api::ApiArgs,
    },
    /// Print the job's errors.
    Errors {
        id: String,
        #[command(flatten)]
        api: api::ApiArgs,
    },
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create a client; prints its secret, which cannot be shown again.
    Create {
        /// Client id (1–256 characters, no control characters).
        #[arg(long)]
        id: String,
        /// The registered tenant its tokens speak for (`ten`).
        #[arg(long)]
        tenant: String,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the clients (of one tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Replace a client's secret; prints the new one. The old one stops working at once.
    RotateSecret {
        #[arg(long)]
        id: String,
    },
    /// Revoke a client: no new tokens, its unexpired tokens refused within 10 s.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// List the keys, newest first.
    List,
    /// Make a new current key; the previous ones stay accepted for --previous-valid-seconds.
    Rotate {
        /// At least the token lifetime of the query service (UTS_TOKEN_TTL_SECONDS) plus leeway.
        #[arg(long, default_value_t = 2100)]
        previous_valid_seconds: u64,
    },
}

fn describe_client(client: &tokens::Client) -> String {
    let revoked = client.revoked_at.map(|at| format!(", revoked {}", format_datetime(at))).unwrap_or_default();
    format!("{}  tenant {}  scopes {}{revoked}", client.client_id, client.tenant_id, client.scopes.join(","))
}

async fn clients(database: &DatabaseArgs, action: ClientAction) -> anyhow::Result<()> {
    let pool = db::connect(database).await?;
    match action {
        ClientAction::Create { id, tenant, scopes, description } => {
            if let Some(problem) = tokens::client_id_problem(&id) {
                anyhow::bail!("--id {problem}");
            }
            if let Some(problem) = tokens::scopes_problem(&scopes) {
                anyhow::bail!("--scopes {problem}");
            }
            let spec = tokens::ClientSpec { client_id: id, tenant_id: tenant, scopes, description };
            let (client, secret) = tokens::create_client(&pool, &spec).await?;
            println!("created {}", describe_client(&client));
            println!("client_id={}", client.client_id);
            println!("client_secret={secret}");
        }
        ClientAction::List { tenant } => {
            let (clients, total) = tokens::list_clients(&pool, tenant.as_deref(), 1000, 0).await?;
            for client in &clients {
                println!("{}", describe_client(client));
            }
            println!("{total} client(s)");
        }
        ClientAction::RotateSecret { id } => {
            let (client, secret) = tokens::rotate_client_secret(&pool, &id).await?;
            println!("rotated {}", describe_client(&client));
            println!("client_secret={secret}");
        }
        ClientAction::Revoke { id } => {
            let client = tokens::revoke_client(&pool, &id).await?;
            println!("revoked {}", describe_client(&client));
        }
    }
    Ok(())
}

async fn signing_keys(database: &DatabaseArgs, action: KeyAction) -> anyhow::Result<()> {
    let pool = db::connect(database).await?;
    match action {
        KeyAction::List => {
            for key in tokens::all_keys(&pool).await? {
                let state = match key.accept_until {
                    None => "current".to_owned(),
                    Some(until) => format!("accepted until {}", format_datetime(until)),
                };
                println!("{}  created {}  {state}", key.kid, format_datetime(key.created_at));
            }
        }
        KeyAction::Rotate { previous_valid_seconds } => {
            let kid = tokens::rotate_signing_key(&pool, Duration::from_secs(previous_valid_seconds)).await?;
            println!("new current signing key {kid}");
        }
    }
    Ok(())
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
            let messages = kafka::read_topic_to_end(&args, &args.topics().status, Duration::from_secs(30)).await?;
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
        Command::Tenant { database, id, tenant_type, operator, display_name } => {
            let tenant_type: TenantType =
                tenant_type.parse().ok().context("--type must be developer, operator, iot or customer")?;
            let spec = tenants::TenantSpec { tenant_type, operator_tenant_id: operator, display_name };
            // The same checks as the admin API's, before any connection is made.
            tenants::check(&id, &spec).map_err(|err| anyhow::anyhow!("tenant refused: {err}"))?;
            let pool = db::connect(&database).await?;
            let (tenant, written) =
                tenants::register(&pool, &id, &spec).await.map_err(|err| anyhow::anyhow!("tenant refused: {err}"))?;
            let verb = if written == tenants::Written::Created { "registered" } else { "replaced" };
            println!("tenant {} {verb} as {}", tenant.tenant_id, tenant.tenant_type);
        }
        Command::Send(args) => send::run(args).await?,
        Command::Jobs { action: JobsAction::Follow { id, timeout_seconds, api } } => {
            send::follow_one(&api::Api::new(&api)?, &id, Duration::from_secs(timeout_seconds)).await?;
        }
        Command::Jobs { action: JobsAction::Errors { id, api } } => {
            let errors = send::errors(&api::Api::new(&api)?, &id, None).await?;
            for error in &errors {
                println!("{error}");
            }
            println!("{} error(s)", errors.len());
        }
        Command::Clients { database, action } => clients(&database, action).await?,
        Command::SigningKeys { database, action } => signing_keys(&database, action).await?,
    }
    Ok(())
}
