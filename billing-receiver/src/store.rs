//! The records billing received: in memory, optionally appended to a JSON-lines data file.
//!
//! One record per `Idempotency-Key`. The check for an earlier record with the same key, the
//! append to the file and the fsync all happen under one lock, so two concurrent retries of the
//! same key cannot both be stored, and the file's order is the arrival order. The price is that
//! readers wait for at most one fsync; this is a test stand-in, not a throughput service.
//!
//! The file is written before memory is touched: a record is acknowledged (201) only once its
//! line is on disk. A crash between `write` and `fsync` can leave a last line without its
//! newline; that record was never acknowledged, so [`RecordStore::open`] drops it and truncates
//! the file back to the last complete line. A complete line that does not parse is corruption
//! and refuses the start: silently skipping it would forget a key and break deduplication.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One record as stored, listed and written to the data file (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRecord {
    pub record_id: Uuid,
    #[serde(with = "millis")]
    pub received_at: DateTime<Utc>,
    pub idempotency_key: String,
    /// The request body exactly as validated (see [`crate::record`]).
    pub record: Value,
}

/// What billing answers about a record: its id and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub record_id: Uuid,
    pub received_at: DateTime<Utc>,
}

impl From<&StoredRecord> for Receipt {
    fn from(record: &StoredRecord) -> Self {
        Self { record_id: record.record_id, received_at: record.received_at }
    }
}

/// What submitting a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// First use of the key: the record is stored (and on disk, with a data file).
    Stored(Receipt),
    /// The key was used before with the same body: nothing new is stored.
    Duplicate(Receipt),
    /// The key was used before with a different body: refused, nothing stored.
    Conflict(Receipt),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context} {path}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data file {path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: String },
    #[error("data file {path} may end in a partial line after a failed write; restart the receiver to repair it")]
    Broken { path: PathBuf },
}

/// The records, by arrival order, key and id.
pub struct RecordStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: Vec<StoredRecord>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<Uuid, usize>,
    file: Option<DataFile>,
}

struct DataFile {
    path: PathBuf,
    file: File,
    /// Length of the complete lines: a failed append is truncated back to it.
    len: u64,
    /// Set when a failed append could not be truncated away; appending after a partial line
    /// would glue two records into one corrupt line, so every later append is refused.
    broken: bool,
}

impl RecordStore {
    /// A store that forgets everything at exit.
    pub fn in_memory() -> Self {
        Self { inner: Mutex::new(Inner::default()) }
    }

    /// Opens (or creates) the data file and loads every record in it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |context, source| StoreError::Io { context, path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| io("creating the directory of", err))?;
        }
        let existing = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(io("reading the data file", err)),
        };
        let mut inner = Inner::default();
        let mut complete_len = 0u64;
        if let Some(bytes) = &existing {
            complete_len = load(&mut inner, bytes, path)?;
        }
        let file =
            OpenOptions::new().create(true).append(true).open(path).map_err(|err| io("opening the data file", err))?;
        match &existing {
            None => sync_parent(path).map_err(|err| io("syncing the directory of", err))?,
            Some(bytes) if bytes.len() as u64 > complete_len => {
                tracing::warn!(
                    path = %path.display(),
                    dropped_bytes = bytes.len() as u64 - complete_len,
                    "data file ends in a partial line (a crash during an unacknowledged append); dropping it"
                );
                file.set_len(complete_len).map_err(|err| io("truncating the partial last line of", err))?;
                file.sync_all().map_err(|err| io("syncing", err))?;
            }
            Some(_) => {}
        }
        inner.file = Some(DataFile { path: path.to_owned(), file, len: complete_len, broken: false });
        Ok(Self { inner: Mutex::new(inner) })
    }

    /// Stores `record` under `key` unless the key was used before. With a data file the record
    /// is on disk (fsynced) when this returns `Stored`. Blocking: call it off the async runtime.
    pub fn submit(&self, key: &str, record: Value, now: DateTime<Utc>) -> Result<Submission, StoreError> {
        let mut inner = self.lock();
        if let Some(&index) = inner.by_key.get(key) {
            let original = &inner.records[index];
            let receipt = Receipt::from(original);
            return Ok(if original.record == record {
                Submission::Duplicate(receipt)
            } else {
                Submission::Conflict(receipt)
            });
        }
        let stored = StoredRecord {
            record_id: Uuid::new_v4(),
            // Millisecond precision: what is answered is exactly what is stored and reloaded.
            received_at: now.trunc_subsecs(3),
            idempotency_key: key.to_owned(),
            record,
        };
        if let Some(file) = &mut inner.file {
            file.append(&stored)?;
        }
        let receipt = Receipt::from(&stored);
        inner.insert(stored);
        Ok(Submission::Stored(receipt))
    }

    /// Every record, in arrival order.
    pub fn list(&self) -> Vec<StoredRecord> {
        self.lock().records.clone()
    }

    pub fn get(&self, record_id: Uuid) -> Option<StoredRecord> {
        let inner = self.lock();
        inner.by_id.get(&record_id).map(|&index| inner.records[index].clone())
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing between the file append and the index updates can panic short of an
        // allocation failure, so the data behind a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn insert(&mut self, record: StoredRecord) {
        let index = self.records.len();
        self.by_key.insert(record.idempotency_key.clone(), index);
        self.by_id.insert(record.record_id, index);
        self.records.push(record);
    }
}

impl DataFile {
    fn append(&mut self, record: &StoredRecord) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::Broken { path: self.path.clone() });
        }
        let mut line = serde_json::to_vec(record).expect("a stored record always serializes");
        line.push(b'\n');
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Take the partial line back off so the next append starts on a line boundary.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.broken = true;
            }
            return Err(StoreError::Io { context: "appending to the data file", path: self.path.clone(), source });
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// Loads the complete lines of `bytes` into `inner`; returns the length of those lines (the
/// rest, if any, is a partial last line).
fn load(inner: &mut Inner, bytes: &[u8], path: &Path) -> Result<u64, StoreError> {
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |last| last + 1);
    for (number, line) in bytes[..complete_len].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: StoredRecord = serde_json::from_slice(line).map_err(|err| StoreError::Corrupt {
            path: path.to_owned(),
            line: number + 1,
            reason: err.to_string(),
        })?;
        // Cannot happen through `submit`; kept first-wins so a hand-edited file still dedups.
        if inner.by_key.contains_key(&record.idempotency_key) || inner.by_id.contains_key(&record.record_id) {
            tracing::warn!(line = number + 1, key = %record.idempotency_key, "data file repeats a key or record id; keeping the first");
            continue;
        }
        inner.insert(record);
    }
    Ok(complete_len as u64)
}

/// A newly created file survives a crash only once its directory entry is on disk too.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// RFC 3339 in UTC with milliseconds, as every answer of the service renders datetimes.
mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};
    use uts_common::domain::{format_datetime, parse_datetime};

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_datetime(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_datetime(&text).map_err(|_| serde::de::Error::custom(format!("not an RFC 3339 datetime: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_path() -> PathBuf {
        std::env::temp_dir().join(format!("billing-receiver-store-{}", Uuid::new_v4())).join("records.jsonl")
    }

    fn now() -> DateTime<Utc> {
        "2024-05-02T03:04:05.678901Z".parse().unwrap()
    }

    fn stored(submission: Submission) -> Receipt {
        match submission {
            Submission::Stored(receipt) => receipt,
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    #[test]
    fn a_key_is_stored_once_and_a_different_body_conflicts() {
        let store = RecordStore::in_memory();
        let first = stored(store.submit("k1", json!({"v": "1"}), now()).unwrap());
        assert_eq!(first.received_at.to_rfc3339(), "2024-05-02T03:04:05.678+00:00");
        let later = now() + chrono::Duration::seconds(5);
        assert_eq!(store.submit("k1", json!({"v": "1"}), later).unwrap(), Submission::Duplicate(first));
        assert_eq!(store.submit("k1", json!({"v": "2"}), later).unwrap(), Submission::Conflict(first));
        // Numbers compare by their exact text: 1 and 1.0 are different bodies.
        let second = stored(store.submit("k2", json!({"n": 1}), later).unwrap());
        let same_value_other_text: Value = serde_json::from_str(r#"{"n": 1.0}"#).unwrap();
        assert_eq!(store.submit("k2", same_value_other_text, later).unwrap(), Submission::Conflict(second));
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(first.record_id).unwrap().record, json!({"v": "1"}));
        let keys: Vec<_> = store.list().into_iter().map(|r| r.idempotency_key).collect();
        assert_eq!(keys, ["k1", "k2"]);
    }

    #[test]
    fn records_survive_a_reopen() {
        let path = temp_path();
        let first = {
            let store = RecordStore::open(&path).unwrap();
            assert!(store.is_empty());
            stored(store.submit("k1", json!({"value": "20.50"}), now()).unwrap())
        };
        let store = RecordStore::open(&path).unwrap();
        assert_eq!(store.submit("k1", json!({"value": "20.50"}), Utc::now()).unwrap(), Submission::Duplicate(first));
        let second = stored(store.submit("k2", json!({}), Utc::now()).unwrap());
        drop(store);
        let store = RecordStore::open(&path).unwrap();
        let ids: Vec<_> = store.list().into_iter().map(|r| r.record_id).collect();
        assert_eq!(ids, [first.record_id, second.record_id]);
        assert_eq!(store.get(first.record_id).unwrap().record["value"], "20.50");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_partial_last_line_is_dropped_and_the_file_repaired() {
        let path = temp_path();
        let first = stored(RecordStore::open(&path).unwrap().submit("k1", json!({}), now()).unwrap());
        let good_len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(br#"{"recordId":"0190"#).unwrap();

        let store = RecordStore::open(&path).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        stored(store.submit("k2", json!({}), now()).unwrap());
        drop(store);
        let store = RecordStore::open(&path).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(first.record_id).unwrap().idempotency_key, "k1");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_corrupt_complete_line_refuses_the_start() {
        let path = temp_path();
        stored(RecordStore::open(&path).unwrap().submit("k1", json!({}), now()).unwrap());
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"not json\n").unwrap();
        match RecordStore::open(&path) {
            Err(StoreError::Corrupt { line: 2, .. }) => {}
            Err(other) => panic!("expected corruption at line 2, got {other}"),
            Ok(_) => panic!("expected corruption at line 2, got a store"),
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn stored_lines_render_datetimes_with_milliseconds() {
        let record = StoredRecord {
            record_id: Uuid::nil(),
            received_at: "2024-05-02T03:04:05Z".parse().unwrap(),
            idempotency_key: "k".into(),
            record: json!({"value": "1"}),
        };
        let line = serde_json::to_value(&record).unwrap();
        assert_eq!(line["receivedAt"], "2024-05-02T03:04:05.000Z");
        assert_eq!(line["recordId"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(serde_json::from_value::<StoredRecord>(line).unwrap(), record);
    }
}
