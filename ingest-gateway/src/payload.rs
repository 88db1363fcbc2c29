//! Validation of the two POST bodies into the `uts.v1` job contents.
//!
//! Two paths, one rule set. The *fast path* deserialises a well-formed body straight into
//! borrowed structs (no JSON tree, values kept as their raw number text) and accepts it only if
//! every check passes. Anything it does not accept goes to the *walker*, which parses the body
//! into a JSON tree with exact number texts (serde_json's `arbitrary_precision`) and walks it
//! by hand so that the error names the exact property
//! (`users[0].resources[1].usages[3].datetime`). The walker is the specification: the fast path
//! must accept exactly what the walker accepts and build the same batch (tested below). Values
//! stay exact decimals on both paths.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use serde_json::{Map, Value};
use uts_common::domain::{parse_datetime, parse_decimal, to_timestamp, UserType, MAX_NAME_LEN, MAX_USAGES_PER_REQUEST};
use uts_common::error::ApiError;
use uts_common::proto::v1;

/// The usages of one request, ready to become a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub users: Vec<v1::UserUsages>,
    pub usages_count: u32,
}

/// Parses the body of `POST /usagesJobs`:
/// `{users:[{tenantId, userId?, userType?, resources:[{application, alias?, resource, usages:[{value, unit, datetime}]}]}]}`.
pub fn parse_usages_jobs(body: &[u8]) -> Result<Batch, ApiError> {
    match fast_usages_jobs(body) {
        Some(batch) => Ok(batch),
        None => walk_usages_jobs(body),
    }
}

#[derive(Deserialize)]
struct JobsIn<'a> {
    #[serde(borrow)]
    users: Vec<UserIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserIn<'a> {
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resources: Vec<ResourceIn<'a>>,
}

#[derive(Deserialize)]
struct ResourceIn<'a> {
    #[serde(borrow)]
    application: Cow<'a, str>,
    #[serde(borrow, default)]
    alias: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resource: Cow<'a, str>,
    #[serde(borrow)]
    usages: Vec<UsageIn<'a>>,
}

#[derive(Deserialize)]
struct UsageIn<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(borrow)]
    unit: Cow<'a, str>,
    #[serde(borrow)]
    datetime: Cow<'a, str>,
}

/// The fast path: `Some` only for a body the walker would accept, with the same batch.
fn fast_usages_jobs(body: &[u8]) -> Option<Batch> {
    let parsed: JobsIn<'_> = serde_json::from_slice(body).ok()?;
    let count: usize = parsed.users.iter().flat_map(|u| &u.resources).map(|r| r.usages.len()).sum();
    if parsed.users.is_empty() || count > MAX_USAGES_PER_REQUEST {
        return None;
    }
    let mut next_index = 0u32;
    let mut users = Vec::with_capacity(parsed.users.len());
    for user in parsed.users {
        let tenant_id = valid_name(user.tenant_id)?;
        let user_id = match user.user_id {
            Some(text) => Some(valid_name(text)?),
            None => None,
        };
        let user_type = match user.user_type {
            Some(text) => valid_name(text)?.parse::<UserType>().ok()?,
            None if user_id.is_none() => UserType::Tenant,
            None => UserType::User,
        };
        if user.resources.is_empty() {
            return None;
        }
        let mut resources = Vec::with_capacity(user.resources.len());
        for resource in user.resources {
            let application = valid_name(resource.application)?;
            let alias = match resource.alias {
                Some(text) => Some(valid_name(text)?),
                None => None,
            };
            let resource_name = valid_name(resource.resource)?;
            if resource.usages.is_empty() {
                return None;
            }
            let mut usages = Vec::with_capacity(resource.usages.len());
            for usage in resource.usages {
                let raw = usage.value.get();
                if !raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                    return None;
                }
                let value = parse_decimal(raw).ok()?;
                let datetime = parse_datetime(&usage.datetime).ok()?;
                usages.push(v1::Usage {
                    index: next_index,
                    value: value.to_string(),
                    unit: valid_name(usage.unit)?,
                    datetime: Some(to_timestamp(datetime)),
                });
                next_index += 1;
            }
            resources.push(v1::ResourceUsages {
                alias: alias.unwrap_or_else(|| application.clone()),
                application,
                resource: resource_name,
                usages,
            });
        }
        users.push(v1::UserUsages {
            user_id: user_id.unwrap_or_else(|| tenant_id.clone()),
            tenant_id,
            user_type: user_type.to_proto() as i32,
            resources,
        });
    }
    Some(Batch { users, usages_count: next_index })
}

fn valid_name(text: Cow<'_, str>) -> Option<String> {
    name_problem(&text).is_none().then(|| text.into_owned())
}

/// The walker: the specification of what is accepted, with an error naming the property.
fn walk_usages_jobs(body: &[u8]) -> Result<Batch, ApiError> {
    let root = parse_json(body)?;
    let root = as_object(&root, "")?;
    let users = required_array(root, "users", "")?;
    check_count(
        users.iter().map(|user| nested_len(user, "resources", |resource| nested_len(resource, "usages", |_| 1))),
    )?;

    let mut next_index = 0u32;
    let mut out = Vec::with_capacity(users.len());
    for (i, user) in users.iter().enumerate() {
        let path = format!("users[{i}]");
        let user = as_object(user, &path)?;
        let tenant_id = required_name(user, "tenantId", &path)?;
        let user_id = optional_name(user, "userId", &path)?;
        let user_type = match optional_name(user, "userType", &path)? {
            Some(text) => text.parse::<UserType>().map_err(|()| {
                ApiError::invalid_body_property(&format!("{path}.userType"), "must be one of tenant, user, agent")
            })?,
            // The original: without userId the usage belongs to the whole tenant.
            None if user_id.is_none() => UserType::Tenant,
            None => UserType::User,
        };
        let resources = required_array(user, "resources", &path)?;
        let mut out_resources = Vec::with_capacity(resources.len());
        for (j, resource) in resources.iter().enumerate() {
            let path = format!("{path}.resources[{j}]");
            let resource = as_object(resource, &path)?;
            let application = required_name(resource, "application", &path)?;
            let alias = optional_name(resource, "alias", &path)?.unwrap_or(application);
            let resource_name = required_name(resource, "resource", &path)?;
            let usages = required_array(resource, "usages", &path)?;
            let usages = parse_resource_usages(usages, &format!("{path}.usages"), USAGE_NAMES, &mut next_index)?;
            out_resources.push(resource_usages(application, alias, resource_name, usages));
        }
        out.push(v1::UserUsages {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.unwrap_or(tenant_id).to_owned(),
            user_type: user_type.to_proto() as i32,
            resources: out_resources,
        });
    }
    Ok(Batch { users: out, usages_count: next_index })
}

/// Parses the body of the older `POST /usages`:
/// `{CustomerTenantID, CustomerUserID, UTSUsageData:[{resourceName?, resourceAlias?, UsageData:[{usage, usageUnit, usageDate}]}]}`.
///
/// `resourceAlias` names the application; it is required here because a usage without an
/// application cannot be verified, aggregated or billed. `resourceName` is the resource and
/// defaults to the application.
pub fn parse_legacy_usages(body: &[u8]) -> Result<Batch, ApiError> {
    let root = parse_json(body)?;
    let root = as_object(&root, "")?;
    let tenant_id = required_name(root, "CustomerTenantID", "")?;
    let user_id = required_name(root, "CustomerUserID", "")?;
    let data = required_array(root, "UTSUsageData", "")?;
    check_count(data.iter().map(|entry| nested_len(entry, "UsageData", |_| 1)))?;

    let mut next_index = 0u32;
    let mut resources = Vec::with_capacity(data.len());
    for (j, entry) in data.iter().enumerate() {
        let path = format!("UTSUsageData[{j}]");
        let entry = as_object(entry, &path)?;
        let application = required_name(entry, "resourceAlias", &path)?;
        let resource = optional_name(entry, "resourceName", &path)?.unwrap_or(application);
        let usages = required_array(entry, "UsageData", &path)?;
        let usages = parse_resource_usages(usages, &format!("{path}.UsageData"), LEGACY_USAGE_NAMES, &mut next_index)?;
        resources.push(resource_usages(application, application, resource, usages));
    }
    let user = v1::UserUsages {
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.to_owned(),
        user_type: v1::UserType::User as i32,
        resources,
    };
    Ok(Batch { users: vec![user], usages_count: next_index })
}

/// The field names of value, unit and datetime in `POST /usagesJobs` and in the older `POST /usages`.
const USAGE_NAMES: [&str; 3] = ["value", "unit", "datetime"];
const LEGACY_USAGE_NAMES: [&str; 3] = ["usage", "usageUnit", "usageDate"];

/// The usages of one resource (`path` names the array), indexed from `next_index` on.
fn parse_resource_usages(
    usages: &[Value],
    path: &str,
    names: [&str; 3],
    next_index: &mut u32,
) -> Result<Vec<v1::Usage>, ApiError> {
    let mut out = Vec::with_capacity(usages.len());
    for (k, usage) in usages.iter().enumerate() {
        out.push(parse_usage(usage, &format!("{path}[{k}]"), names, *next_index)?);
        *next_index += 1;
    }
    Ok(out)
}

fn resource_usages(application: &str, alias: &str, resource: &str, usages: Vec<v1::Usage>) -> v1::ResourceUsages {
    v1::ResourceUsages {
        application: application.to_owned(),
        alias: alias.to_owned(),
        resource: resource.to_owned(),
        usages,
    }
}

/// One usage; `names` are the field names of value, unit and datetime in this body shape.
fn parse_usage(usage: &Value, path: &str, names: [&str; 3], index: u32) -> Result<v1::Usage, ApiError> {
    let [value_name, unit_name, datetime_name] = names;
    let usage = as_object(usage, path)?;
    let value_path = format!("{path}.{value_name}");
    let value = match usage.get(value_name) {
        None | Some(Value::Null) => return Err(ApiError::missing_body_property(&value_path)),
        Some(Value::Number(number)) => parse_decimal(&number.to_string())
            .map_err(|problem| ApiError::invalid_body_property(&value_path, problem))?,
        Some(_) => return Err(ApiError::invalid_body_property(&value_path, "must be a number")),
    };
    let unit = required_name(usage, unit_name, path)?;
    let datetime_path = format!("{path}.{datetime_name}");
    let datetime = match usage.get(datetime_name) {
        None | Some(Value::Null) => return Err(ApiError::missing_body_property(&datetime_path)),
        Some(Value::String(text)) => {
            parse_datetime(text).map_err(|problem| ApiError::invalid_body_property(&datetime_path, problem))?
        }
        Some(_) => {
            return Err(ApiError::invalid_body_property(
                &datetime_path,
                "must be a string holding an RFC 3339 date-time",
            ))
        }
    };
    Ok(v1::Usage { index, value: value.to_string(), unit: unit.to_owned(), datetime: Some(to_timestamp(datetime)) })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body_property("", "is empty; a JSON object is required"));
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_body_property("", format_args!("is not valid JSON: {err}")))
}

/// 413 before anything else when the request holds more usages than allowed: the whole request
/// is refused, nothing is accepted.
fn check_count(counts: impl Iterator<Item = usize>) -> Result<(), ApiError> {
    let total: usize = counts.sum();
    if total > MAX_USAGES_PER_REQUEST {
        return Err(ApiError::payload_too_large(format!(
            "the request holds {total} usages; at most {MAX_USAGES_PER_REQUEST} are accepted per request"
        )));
    }
    Ok(())
}

/// Sum of `inner` over the elements of `value[key]` when it is an array; 0 for other shapes
/// (they fail validation later with a precise message).
fn nested_len(value: &Value, key: &str, inner: impl Fn(&Value) -> usize) -> usize {
    value.get(key).and_then(Value::as_array).map_or(0, |items| items.iter().map(&inner).sum())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value.as_object().ok_or_else(|| ApiError::invalid_body_property(path, "must be a JSON object"))
}

fn required_array<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Vec<Value>, ApiError> {
    let path = join(path, key);
    match object.get(key) {
        None | Some(Value::Null) => Err(ApiError::missing_body_property(&path)),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(ApiError::invalid_body_property(&path, "must not be empty"))
        }
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(ApiError::invalid_body_property(&path, "must be an array")),
    }
}

fn required_name<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, ApiError> {
    optional_name(object, key, path)?.ok_or_else(|| ApiError::missing_body_property(&join(path, key)))
}

/// A non-empty string of at most [`MAX_NAME_LEN`] characters without control characters;
/// `None` when absent or null.
fn optional_name<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>, ApiError> {
    let text = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(_) => return Err(ApiError::invalid_body_property(&join(path, key), "must be a string")),
    };
    match name_problem(text) {
        Some(problem) => Err(ApiError::invalid_body_property(&join(path, key), problem)),
        None => Ok(Some(text)),
    }
}

fn name_problem(text: &str) -> Option<uts_common::domain::NameProblem> {
    uts_common::domain::name_problem(text, MAX_NAME_LEN)
}

#[cfg(test)]
mod tests;
