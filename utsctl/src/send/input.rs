//! The input of `utsctl send`: NDJSON or CSV rows, and the jobs of at most [`JOB_SIZE`] usages
//! made from them, each with its idempotency key and the input line of every usage.

use super::*;

/// One input usage, with its line (1-based; the CSV header is line 1).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) line: usize,
    pub(super) tenant_id: String,
    pub(super) user_id: Option<String>,
    pub(super) user_type: Option<String>,
    pub(super) application: String,
    pub(super) alias: Option<String>,
    pub(super) resource: String,
    pub(super) value: Number,
    pub(super) unit: String,
    pub(super) datetime: String,
}

pub(super) fn text_field(
    object: &serde_json::Map<String, Value>,
    key: &str,
    line: usize,
    required: bool,
) -> anyhow::Result<Option<String>> {
    match object.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => bail!("line {line}: {key} is required"),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => bail!("line {line}: {key} must be a string"),
    }
}

pub(super) fn row_of(object: &serde_json::Map<String, Value>, line: usize) -> anyhow::Result<Row> {
    let required = |key| text_field(object, key, line, true).map(Option::unwrap_or_default);
    let value = match object.get("value") {
        Some(Value::Number(number)) => number.clone(),
        Some(Value::String(text)) => {
            text.parse::<Number>().map_err(|_| anyhow::anyhow!("line {line}: value {text:?} is not a number"))?
        }
        _ => bail!("line {line}: value is required and must be a number"),
    };
    Ok(Row {
        line,
        tenant_id: required("tenantId")?,
        user_id: text_field(object, "userId", line, false)?,
        user_type: text_field(object, "userType", line, false)?,
        application: required("application")?,
        alias: text_field(object, "alias", line, false)?,
        resource: required("resource")?,
        value,
        unit: required("unit")?,
        datetime: required("datetime")?,
    })
}

pub(super) fn parse_ndjson(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", index + 1))?;
        let object = value.as_object().with_context(|| format!("line {}: not a JSON object", index + 1))?;
        rows.push(row_of(object, index + 1)?);
    }
    Ok(rows)
}

pub(super) fn parse_csv(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().context("reading the CSV header")?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.context("reading a CSV record")?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let mut object = serde_json::Map::new();
        for (name, field) in headers.iter().zip(record.iter()) {
            if !field.is_empty() {
                object.insert(name.to_owned(), Value::String(field.to_owned()));
            }
        }
        rows.push(row_of(&object, line)?);
    }
    Ok(rows)
}

pub(super) fn read_input(args: &SendArgs) -> anyhow::Result<(Vec<Row>, &'static str)> {
    let mut text = String::new();
    if args.input.as_os_str() == "-" {
        std::io::stdin().lock().read_to_string(&mut text).context("reading stdin")?;
    } else {
        let file = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", args.input.display()))?;
    }
    let csv = match args.format {
        Format::Csv => true,
        Format::Ndjson => false,
        Format::Auto if args.input.as_os_str() == "-" => !text.trim_start().starts_with('{'),
        Format::Auto => args.input.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("csv")),
    };
    if csv {
        Ok((parse_csv(&text)?, "CSV"))
    } else {
        Ok((parse_ndjson(&text)?, "NDJSON"))
    }
}

/// A job to post: its body, its key, and the input line of each usage by (user, resource, usage)
/// index (to name the line of a usage an answer or an error points at).
pub struct Job {
    pub(super) body: Vec<u8>,
    pub(super) key: String,
    pub(super) lines: HashMap<(usize, usize, usize), usize>,
    pub(super) first_line: usize,
    pub(super) last_line: usize,
    pub(super) usages: usize,
}

/// (tenantId, userId, userType) and (application, alias, resource): what a job body groups by.
pub(super) type UserKey = (String, Option<String>, Option<String>);
pub(super) type ResourceKey = (String, Option<String>, String);
/// A user's resources, each with its rows, in order of first appearance.
pub(super) type Resources<'a> = Vec<(ResourceKey, Vec<&'a Row>)>;

/// Groups the `index`th chunk of rows into one `POST /usagesJobs` body, users and resources in
/// order of first appearance.
pub(super) fn job_of(index: usize, rows: &[Row], key_prefix: &str) -> Job {
    let mut users: Vec<(UserKey, Resources)> = Vec::new();
    for row in rows {
        let user_key = (row.tenant_id.clone(), row.user_id.clone(), row.user_type.clone());
        let user_at = users.iter().position(|(key, _)| *key == user_key).unwrap_or_else(|| {
            users.push((user_key, Vec::new()));
            users.len() - 1
        });
        let resources = &mut users[user_at].1;
        let resource_key = (row.application.clone(), row.alias.clone(), row.resource.clone());
        let resource_at = resources.iter().position(|(key, _)| *key == resource_key).unwrap_or_else(|| {
            resources.push((resource_key, Vec::new()));
            resources.len() - 1
        });
        resources[resource_at].1.push(row);
    }
    let mut lines = HashMap::new();
    let users: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(u, ((tenant, user, user_type), resources))| {
            let resources: Vec<Value> = resources
                .iter()
                .enumerate()
                .map(|(r, ((application, alias, resource), usages))| {
                    let usages: Vec<Value> = usages
                        .iter()
                        .enumerate()
                        .map(|(i, row)| {
                            lines.insert((u, r, i), row.line);
                            json!({"value": Value::Number(row.value.clone()), "unit": row.unit, "datetime": row.datetime})
                        })
                        .collect();
                    let mut resource = json!({"application": application, "resource": resource, "usages": usages});
                    if let Some(alias) = alias {
                        resource["alias"] = json!(alias);
                    }
                    resource
                })
                .collect();
            let mut user_json = json!({"tenantId": tenant, "resources": resources});
            if let Some(user) = user {
                user_json["userId"] = json!(user);
            }
            if let Some(user_type) = user_type {
                user_json["userType"] = json!(user_type);
            }
            user_json
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "users": users })).expect("a JSON value serialises");
    let mut hasher = Sha256::new();
    hasher.update(format!("utsctl send v1, chunk {index}\n").as_bytes());
    hasher.update(&body);
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Job {
        key: format!("{key_prefix}utsctl-{}", &hex[..48]),
        body,
        lines,
        first_line: rows.first().map_or(0, |row| row.line),
        last_line: rows.last().map_or(0, |row| row.line),
        usages: rows.len(),
    }
}

/// The input line a `users[u].resources[r].usages[i]` path of an answer points at.
pub(super) fn line_of(job: &Job, text: &str) -> Option<usize> {
    let index = |name: &str| -> Option<usize> {
        let start = text.find(&format!("{name}["))? + name.len() + 1;
        text[start..].split(']').next()?.parse().ok()
    };
    job.lines.get(&(index("users")?, index("resources")?, index("usages")?)).copied()
}
