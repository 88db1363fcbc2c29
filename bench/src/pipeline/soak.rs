//! The soak mode's verdict: memory flat and lags bounded after the warm-up.

use super::*;

/// Minutes of a soak that are warm-up: caches, pools and librdkafka's queues fill.
pub(super) const WARM_UP_MINUTES: usize = 2;

/// One minute of a soak.
pub(super) struct Minute {
    pub(super) accepted: u64,
    pub(super) completed: u64,
    /// Per process, the mean of the minute's RSS samples (one a second), in MB.
    pub(super) rss: BTreeMap<String, u64>,
    pub(super) max_lag: BTreeMap<String, u64>,
}

/// The billing receiver stands in for the billing system and keeps every record it was sent, in
/// memory by design: its RSS is reported, not judged.
const KEEPS_EVERYTHING: &str = "receiver";

/// The soak's verdict, over the minutes after the warm-up. Memory, per process: the mean RSS of
/// the last third against that of the first third (flat: within 10 %; a single sample swings
/// with the batches in hand, so the highest minute is printed but is not the rule). Lag, per
/// stage: the largest in the first and in the last third (bounded: the last no more than twice
/// the first, or below 10 s of load).
pub(super) fn soak_verdict(minutes: &[Minute], messages_per_second: u64) {
    if minutes.len() <= WARM_UP_MINUTES + 1 {
        println!("  soak: too short for a verdict ({} minutes, {WARM_UP_MINUTES} of warm-up)", minutes.len());
        return;
    }
    let after = &minutes[WARM_UP_MINUTES..];
    let third = (after.len() / 3).max(1);
    let (first, last) = (&after[..third], &after[after.len() - third..]);
    let mean = |ms: &[Minute], name: &str| {
        let values: Vec<u64> = ms.iter().filter_map(|m| m.rss.get(name).copied()).collect();
        values.iter().sum::<u64>() as f64 / values.len().max(1) as f64
    };
    let mut flat = true;
    let mut lines = Vec::new();
    for name in minutes[WARM_UP_MINUTES - 1].rss.keys() {
        let (early, late) = (mean(first, name), mean(last, name));
        let growth = (late / early.max(1.0) - 1.0) * 100.0;
        let peak = after.iter().filter_map(|m| m.rss.get(name)).max().copied().unwrap_or(0);
        let judged = name != KEEPS_EVERYTHING;
        flat &= !judged || growth <= 10.0;
        let note = if judged { "" } else { ", keeps every record: not judged" };
        lines.push(format!("{name} {early:.0} -> {late:.0} MB ({growth:+.0} %, highest minute {peak}{note})"));
    }
    println!(
        "  soak memory (mean of the first third -> of the last third after warm-up): {}: {}",
        lines.join(", "),
        if flat { "FLAT" } else { "GROWING" }
    );
    let mut bounded = true;
    let mut lines = Vec::new();
    for name in minutes[0].max_lag.keys() {
        let most = |ms: &[Minute]| ms.iter().filter_map(|m| m.max_lag.get(name)).max().copied().unwrap_or(0);
        let (early, late) = (most(first), most(last));
        bounded &= late <= (2 * early).max(10 * messages_per_second);
        lines.push(format!("{name} {early} -> {late}"));
    }
    println!(
        "  soak lag (largest in the first third -> in the last third after warm-up, messages): {}: {}",
        lines.join(", "),
        if bounded { "BOUNDED" } else { "GROWING" }
    );
}
