//! The soak mode's verdict: memory flat and lags bounded after the warm-up.

use super::*;

/// Minutes of a soak that are warm-up: caches, pools and librdkafka's queues fill.
pub(super) const WARM_UP_MINUTES: usize = 2;

/// One minute of a soak.
pub(super) struct Minute {
    pub(super) accepted: u64,
    pub(super) completed: u64,
    pub(super) rss: BTreeMap<String, u64>,
    pub(super) max_lag: BTreeMap<String, u64>,
}

/// The soak's verdict: per process, RSS at the end of the warm-up and the most after it (flat:
/// within 10 %); per stage, the largest lag in the first and in the last third after the
/// warm-up (bounded: the last no more than twice the first, or below 10 s of load).
pub(super) fn soak_verdict(minutes: &[Minute], messages_per_second: u64) {
    if minutes.len() <= WARM_UP_MINUTES + 1 {
        println!("  soak: too short for a verdict ({} minutes, {WARM_UP_MINUTES} of warm-up)", minutes.len());
        return;
    }
    let after = &minutes[WARM_UP_MINUTES..];
    let reference = &minutes[WARM_UP_MINUTES - 1].rss;
    let mut flat = true;
    let mut lines = Vec::new();
    for (name, base) in reference {
        let most = after.iter().filter_map(|m| m.rss.get(name)).max().copied().unwrap_or(0);
        let growth = (most as f64 / (*base).max(1) as f64 - 1.0) * 100.0;
        flat &= growth <= 10.0;
        lines.push(format!("{name} {base} -> at most {most} MB ({growth:+.0} %)"));
    }
    println!("  soak memory after warm-up: {}: {}", lines.join(", "), if flat { "FLAT" } else { "GROWING" });
    let third = (after.len() / 3).max(1);
    let (first, last) = (&after[..third], &after[after.len() - third..]);
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
