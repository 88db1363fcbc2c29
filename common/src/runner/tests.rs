use super::*;

#[test]
fn a_consumer_is_live_while_waiting_or_briefly_busy_and_not_once_stuck_or_stopped() {
    let liveness = Liveness::new(BATCH_STALL);
    assert_eq!(liveness.check(), Ok(()), "waiting for messages");
    liveness.batch_taken();
    assert_eq!(liveness.check(), Ok(()), "a batch just taken");
    liveness.batch_since_ms.store(Utc::now().timestamp_millis() - 121_000, Relaxed);
    assert_eq!(liveness.check(), Err("one consumer batch has been in hand for 121 s".into()));
    liveness.batch_done();
    assert_eq!(liveness.check(), Ok(()));
    liveness.stopped();
    assert_eq!(liveness.check(), Err("the consumer loop has stopped".into()));
}
