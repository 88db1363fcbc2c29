//! `utsctl dead-letters` against the real Kafka: a dead letter is listed with its origin and
//! reason, and --replay puts the original message back on its source topic.

use std::process::Command;
use std::time::Duration;

use uts_common::proto::{v1, Message};
use uts_testkit::{isolated_kafka, read_topic};

fn utsctl(kafka: &uts_common::config::KafkaArgs, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_utsctl"))
        .arg("dead-letters")
        .args(args)
        .env("UTS_KAFKA_BROKERS", &kafka.brokers)
        .env("UTS_TOPIC_PREFIX", &kafka.topic_prefix)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "utsctl failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_to_their_topic() {
    let args = isolated_kafka(1).await;
    let topics = args.topics();
    let letter = v1::DeadLetter {
        source_topic: topics.usage_jobs.clone(),
        partition: 0,
        offset: 41,
        stage: v1::Stage::Verifier as i32,
        reason: "usage job without job_id".into(),
        original_key: b"job-dl".to_vec(),
        original_value: b"\x0a\x06job-dl".to_vec(),
        failed_at: Some(uts_common::domain::to_timestamp(chrono_now())),
    };
    uts_testkit::produce(&args, &topics.dead_letter, &[(b"job-dl", &letter.encode_to_vec())]).await;

    let listed = utsctl(&args, &[]);
    assert!(
        listed.contains(&format!(
            "STAGE_VERIFIER {}[0]@41 key=\"job-dl\" value=8 bytes: usage job without job_id",
            topics.usage_jobs
        )),
        "{listed}"
    );
    assert!(listed.contains("1 dead letter(s)"), "{listed}");

    let replayed = utsctl(&args, &["--replay", &topics.usage_jobs, "--partition", "0", "--offset", "41"]);
    assert!(replayed.starts_with("replayed:"), "{replayed}");
    let back = read_topic(&args, &topics.usage_jobs, 1, Duration::from_secs(30)).await;
    assert_eq!(back, vec![(b"job-dl".to_vec(), b"\x0a\x06job-dl".to_vec())]);
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
