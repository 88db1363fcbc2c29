//! `utsctl send FILE|-`: a backfill or a batch export, posted as jobs of at most 200 usages.
//!
//! Input: NDJSON (one usage per line) or CSV with a header row, both with the fields
//! `tenantId, userId?, userType?, application, alias?, resource, value, unit, datetime` (the
//! `POST /usagesJobs` names; `value` keeps every digit as written). Usages are taken in input
//! order, 200 to a job; each job's `Idempotency-Key` is derived from its position and its body
//! (`utsctl-` and the SHA-256 of both), so sending the same input again — or the same input with
//! more usages appended, to resume — re-finds the same jobs and nothing is counted twice (the
//! gateway answers them as replays), while identical chunks at different places of one input stay
//! different jobs. `--key-prefix` namespaces the keys of inputs that could hold the same chunk at
//! the same place.
//!
//! Posting runs `--concurrency` jobs at once with retries; then every job is followed to a
//! settled status (COMPLETED, or ERRORS once no usage is still moving) and a summary printed:
//! jobs and usages per status, and each error with the input line of its usage.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{json, Number, Value};
use sha2::{Digest, Sha256};

use crate::api::{error_text, Api, ApiArgs};

mod input;
pub use input::Job;
use input::*;

const API: &str = "/api/usagetransparency/v3";

/// Most usages in one job (the API's limit).
pub const JOB_SIZE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// From the file name (.csv → CSV, otherwise NDJSON); for stdin, from the first character.
    Auto,
    Ndjson,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The usages: a file, or - for stdin.
    pub input: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Jobs posted at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Prefix of every Idempotency-Key (namespaces inputs that may hold identical chunks).
    #[arg(long, default_value = "")]
    pub key_prefix: String,
    /// Post only; do not follow the jobs.
    #[arg(long)]
    pub no_follow: bool,
    /// How long to follow the jobs before giving up, in seconds.
    #[arg(long, default_value_t = 600)]
    pub follow_timeout_seconds: u64,
    /// Print the summary as one JSON object (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// What became of one job.
#[derive(Debug, Default, Clone)]
struct Outcome {
    id: Option<String>,
    replayed: bool,
    refused: Option<String>,
    status: Option<String>,
    summary: Vec<Value>,
    errors: Vec<String>,
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let (rows, format) = read_input(&args)?;
    if rows.is_empty() {
        bail!("{} holds no usages", args.input.display());
    }
    let jobs: Vec<Arc<Job>> =
        rows.chunks(JOB_SIZE).enumerate().map(|(i, chunk)| Arc::new(job_of(i, chunk, &args.key_prefix))).collect();
    eprintln!(
        "read {} usages ({format}) into {} jobs of at most {JOB_SIZE}; posting to {}",
        rows.len(),
        jobs.len(),
        args.api.url
    );
    let api = Arc::new(Api::new(&args.api)?);
    let bar = progress(jobs.len() as u64, "posted");
    let mut outcomes: Vec<Outcome> = futures::stream::iter(jobs.iter().cloned())
        .map(|job| {
            let (api, bar) = (api.clone(), bar.clone());
            async move {
                let outcome = post(&api, &job).await;
                bar.inc(1);
                outcome
            }
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();

    if !args.no_follow {
        let bar = progress(outcomes.iter().filter(|o| o.id.is_some()).count() as u64, "settled");
        let deadline = Instant::now() + Duration::from_secs(args.follow_timeout_seconds);
        let followed: Vec<Outcome> = futures::stream::iter(outcomes.into_iter().zip(jobs.iter().cloned()))
            .map(|(outcome, job)| {
                let (api, bar) = (api.clone(), bar.clone());
                async move {
                    if outcome.id.is_none() {
                        return outcome;
                    }
                    let outcome = follow(&api, &job, outcome, deadline).await;
                    bar.inc(1);
                    outcome
                }
            })
            .buffered(args.concurrency.max(1) * 4)
            .collect()
            .await;
        bar.finish_and_clear();
        outcomes = followed;
    }
    report(&args, &jobs, &outcomes, api.retries.load(Ordering::Relaxed));
    if outcomes.iter().any(|o| o.refused.is_some()) {
        bail!("some jobs were refused (see above)");
    }
    Ok(())
}

fn progress(len: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} jobs {what} ({{elapsed}})"))
            .expect("a valid template"),
    );
    bar
}

async fn post(api: &Api, job: &Job) -> Outcome {
    match api.call(Method::POST, &format!("{API}/usagesJobs"), Some(&job.body), Some(&job.key)).await {
        Ok(answer) if answer.status == StatusCode::ACCEPTED => Outcome {
            id: answer.body["id"].as_str().map(str::to_owned),
            replayed: answer.replayed,
            ..Outcome::default()
        },
        Ok(answer) => {
            let message = error_text(&answer.body);
            let at = line_of(job, &message)
                .map_or_else(|| format!("lines {}–{}", job.first_line, job.last_line), |line| format!("line {line}"));
            Outcome { refused: Some(format!("{at}: {} {message}", answer.status.as_u16())), ..Outcome::default() }
        }
        Err(err) => Outcome {
            refused: Some(format!("lines {}–{}: {err:#}", job.first_line, job.last_line)),
            ..Outcome::default()
        },
    }
}

/// Statuses a usage may still leave.
const MOVING: [&str; 4] = ["ACCEPTED", "VERIFIED", "NOVERIFICATION", "SENTFORBILLING"];

/// Whether a `GET /usagesJobs/{id}` answer shows a settled job: COMPLETED, or ERRORS with no
/// usage in a status it can still leave.
fn settled(job: &Value) -> bool {
    let moving = job["usagesSummary"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|row| row["processStatus"].as_str().is_some_and(|status| MOVING.contains(&status)));
    match job["status"].as_str() {
        Some("COMPLETED") => true,
        Some("ERRORS") => !moving,
        _ => false,
    }
}

/// Polls the job until it settled (COMPLETED, or ERRORS with no usage still moving) or the
/// deadline; then reads its errors.
async fn follow(api: &Api, job: &Job, mut outcome: Outcome, deadline: Instant) -> Outcome {
    let id = outcome.id.clone().unwrap_or_default();
    loop {
        match api.get(&format!("{API}/usagesJobs/{id}?size=1000")).await {
            Ok(body) => {
                outcome.status = body["status"].as_str().map(str::to_owned);
                outcome.summary = body["usagesSummary"].as_array().cloned().unwrap_or_default();
                if settled(&body) {
                    break;
                }
            }
            Err(err) => outcome.status = Some(format!("unknown ({err:#})")),
        }
        if Instant::now() > deadline {
            outcome.status =
                Some(format!("{} (not settled when following stopped)", outcome.status.unwrap_or_default()));
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if outcome.status.as_deref() == Some("ERRORS") {
        outcome.errors =
            errors(api, &id, Some(job)).await.unwrap_or_else(|err| vec![format!("errors unreadable: {err:#}")]);
    }
    outcome
}

/// Every error of a job, one line each (with the input line of its usage when `job` is known).
pub async fn errors(api: &Api, id: &str, job: Option<&Job>) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for page in 0.. {
        let body = api.get(&format!("{API}/usagesJobs/{id}/errors?page={page}&size=1000")).await?;
        for error in body["errors"].as_array().into_iter().flatten() {
            let usages = error["errorData"].to_string();
            let lines_of_usages = job.map(|job| usage_lines(job, &error["errorData"])).unwrap_or_default();
            let at = match lines_of_usages.as_slice() {
                [] => String::new(),
                [line] => format!("line {line}: "),
                many => format!("lines {}: ", many.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
            };
            lines.push(format!(
                "{at}{} {}{}",
                error["code"].as_str().unwrap_or("?"),
                error["message"].as_str().unwrap_or(""),
                if job.is_none() { format!(" {usages}") } else { String::new() }
            ));
        }
        let pages = body["page"]["totalPages"].as_u64().unwrap_or(0);
        if page + 1 >= pages {
            break;
        }
    }
    Ok(lines)
}

/// The input lines of the usages an error's `errorData` shows (matched on tenant, application,
/// resource, unit and value; each input usage used once).
fn usage_lines(job: &Job, data: &Value) -> Vec<usize> {
    let Ok(body) = serde_json::from_slice::<Value>(&job.body) else { return Vec::new() };
    let text = |value: &Value| value.to_string().trim_matches('"').to_owned();
    let empty = Vec::new();
    let list = |value: &Value| value.as_array().unwrap_or(&empty).clone();
    let mut taken = std::collections::HashSet::new();
    let mut lines = Vec::new();
    for user in list(data) {
        for resource in list(&user["resources"]) {
            for usage in list(&resource["usages"]) {
                let found = list(&body["users"]).iter().enumerate().find_map(|(u, candidate)| {
                    if candidate["tenantId"] != user["tenantId"] {
                        return None;
                    }
                    list(&candidate["resources"]).iter().enumerate().find_map(|(r, res)| {
                        if res["application"] != resource["application"] || res["resource"] != resource["resource"] {
                            return None;
                        }
                        list(&res["usages"]).iter().enumerate().find_map(|(i, mine)| {
                            let same = mine["unit"] == usage["unit"] && text(&mine["value"]) == text(&usage["value"]);
                            (same && !taken.contains(&(u, r, i))).then_some((u, r, i))
                        })
                    })
                });
                if let Some(position) = found {
                    taken.insert(position);
                    lines.extend(job.lines.get(&position).copied());
                }
            }
        }
    }
    lines.sort_unstable();
    lines
}

fn report(args: &SendArgs, jobs: &[Arc<Job>], outcomes: &[Outcome], retries: u64) {
    let mut job_statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut usage_statuses: BTreeMap<String, i64> = BTreeMap::new();
    for outcome in outcomes {
        let status = match (&outcome.refused, &outcome.status) {
            (Some(_), _) => "REFUSED".to_owned(),
            (None, Some(status)) => status.clone(),
            (None, None) => "ACCEPTED".to_owned(),
        };
        *job_statuses.entry(status).or_default() += 1;
        for row in &outcome.summary {
            if let (Some(status), Some(count)) = (row["processStatus"].as_str(), row["usagesCount"].as_i64()) {
                *usage_statuses.entry(status.to_owned()).or_default() += count;
            }
        }
    }
    let posted = outcomes.iter().filter(|o| o.id.is_some()).count();
    let replayed = outcomes.iter().filter(|o| o.replayed).count();
    let usages: usize = jobs.iter().map(|job| job.usages).sum();
    if args.json {
        let summary = json!({
            "usages": usages,
            "jobs": jobs.len(),
            "accepted": posted - replayed,
            "replayed": replayed,
            "refused": outcomes.iter().filter_map(|o| o.refused.clone()).collect::<Vec<_>>(),
            "retries": retries,
            "jobStatuses": job_statuses,
            "usageStatuses": usage_statuses,
            "jobIds": outcomes.iter().filter_map(|o| o.id.clone()).collect::<Vec<_>>(),
            "errors": outcomes.iter().flat_map(|o| o.errors.clone()).collect::<Vec<_>>(),
        });
        println!("{summary}");
        return;
    }
    println!(
        "{usages} usages in {} jobs: {} newly accepted, {replayed} already accepted by an earlier run (same Idempotency-Key), {} refused; {retries} retries",
        jobs.len(),
        posted - replayed,
        jobs.len() - posted
    );
    let list = |map: &BTreeMap<String, _>| map.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
    println!("jobs: {}", list(&job_statuses.iter().map(|(k, v)| (k.clone(), *v as i64)).collect()));
    if !usage_statuses.is_empty() {
        println!("usages: {}", list(&usage_statuses));
    }
    for outcome in outcomes {
        if let Some(refused) = &outcome.refused {
            println!("refused {refused}");
        }
        for error in &outcome.errors {
            println!("job {}: {error}", outcome.id.as_deref().unwrap_or("?"));
        }
    }
}

/// `utsctl jobs follow ID`: polls until the job settled, printing each change.
pub async fn follow_one(api: &Api, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let body = api.get(&format!("{API}/usagesJobs/{id}?size=1000")).await?;
        let status = body["status"].as_str().unwrap_or("?").to_owned();
        let summary: Vec<String> = body["usagesSummary"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                format!(
                    "{} {}/{} {}",
                    row["usagesCount"],
                    row["application"].as_str().unwrap_or(""),
                    row["unit"].as_str().unwrap_or(""),
                    row["processStatus"].as_str().unwrap_or("")
                )
            })
            .collect();
        let line = format!("{status}: {}", summary.join(", "));
        if line != last {
            println!("{line}");
            last = line;
        }
        if settled(&body) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("job {id} did not settle within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests;
