//! Folding `uts.status` events into usage counts per status: what a job's status is made of.
//!
//! Events carry transitions `(application, unit, from, to, count)` and deterministic ids;
//! applying each id once, in any order, gives the counts (a usage's `from` is subtracted and
//! its `to` added; the first step starts from ACCEPTED). The query service's projection, the
//! end-to-end tests and `utsctl status` all fold the same way.

use std::collections::{BTreeMap, HashSet};

use crate::proto::v1;

/// Usage counts per (application, unit, status) of one job, and its errors.
#[derive(Debug, Default, Clone)]
pub struct Board {
    seen: HashSet<String>,
    pub counts: BTreeMap<(String, String, String), i64>,
    pub errors: Vec<v1::UsageError>,
}

/// The API spelling of a proto status (`VERIFIED`, `RECEIVEDFORBILLING`, ...).
pub fn status_name(value: i32) -> String {
    v1::UsageStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("USAGE_STATUS_").to_owned())
        .unwrap_or_else(|_| value.to_string())
}

impl Board {
    /// Applies an event once (events are deduplicated by id, like the projection does).
    pub fn apply(&mut self, event: &v1::StatusEvent) {
        if !self.seen.insert(event.event_id.clone()) {
            return;
        }
        for t in &event.transitions {
            let (app, unit) = (t.application.clone(), t.unit.clone());
            if t.from != v1::UsageStatus::Accepted as i32 {
                *self.counts.entry((app.clone(), unit.clone(), status_name(t.from))).or_default() -= i64::from(t.count);
            }
            *self.counts.entry((app, unit, status_name(t.to))).or_default() += i64::from(t.count);
        }
        self.errors.extend(event.errors.iter().cloned());
    }

    /// Usages now in `status`, over every application and unit.
    pub fn in_status(&self, status: &str) -> i64 {
        self.counts.iter().filter(|((_, _, s), _)| s == status).map(|(_, n)| n).sum()
    }

    /// Statuses holding at least one usage, with their counts.
    pub fn nonzero(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for ((_, _, status), n) in &self.counts {
            if *n != 0 {
                *out.entry(status.clone()).or_default() += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, from: v1::UsageStatus, to: v1::UsageStatus, count: u32) -> v1::StatusEvent {
        v1::StatusEvent {
            event_id: id.into(),
            transitions: vec![v1::StatusTransition {
                application: "app".into(),
                unit: "u".into(),
                from: from as i32,
                to: to as i32,
                count,
                terminal: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn any_order_and_duplicates_give_the_same_counts() {
        use v1::UsageStatus as S;
        let events = [
            event("verifier:j", S::Accepted, S::Verified, 3),
            event("aggregator:j:k", S::Verified, S::Aggregated, 3),
            event("billing:j:b:1:received", S::Aggregated, S::Sentforbilling, 3),
        ];
        let mut forward = Board::default();
        for e in &events {
            forward.apply(e);
        }
        let mut backward = Board::default();
        for e in events.iter().rev().chain(events.iter()) {
            backward.apply(e);
        }
        assert_eq!(forward.nonzero(), backward.nonzero());
        assert_eq!(forward.nonzero(), BTreeMap::from([("SENTFORBILLING".to_owned(), 3)]));
        assert_eq!(forward.in_status("SENTFORBILLING"), 3);
    }
}
