use super::*;

fn rows(text: &str) -> Vec<Row> {
    parse_ndjson(text).unwrap()
}

#[test]
fn ndjson_and_csv_read_the_same_usages_with_every_digit() {
    let ndjson = r#"{"tenantId":"plant","userId":"u","application":"app","resource":"r1","value":1.000000000000000000000000001,"unit":"kWh","datetime":"2026-12-01T10:00:00Z"}

{"tenantId":"plant","application":"app","resource":"r2","value":"2","unit":"kWh","datetime":"2026-12-01T11:00:00Z"}"#;
    let csv = "tenantId,userId,application,resource,value,unit,datetime\n\
                   plant,u,app,r1,1.000000000000000000000000001,kWh,2026-12-01T10:00:00Z\n\
                   plant,,app,r2,2,kWh,2026-12-01T11:00:00Z\n";
    let (from_json, from_csv) = (rows(ndjson), parse_csv(csv).unwrap());
    assert_eq!(from_json.len(), 2);
    assert_eq!(from_json[0].value.to_string(), "1.000000000000000000000000001");
    assert_eq!((from_json[1].line, from_csv[1].line), (3, 3));
    for (a, b) in from_json.iter().zip(&from_csv) {
        assert_eq!(
            (&a.tenant_id, &a.user_id, &a.value, &a.resource),
            (&b.tenant_id, &b.user_id, &b.value, &b.resource)
        );
    }
    assert!(parse_ndjson(r#"{"tenantId":"p","application":"a","resource":"r","unit":"u","datetime":"d"}"#)
        .unwrap_err()
        .to_string()
        .contains("value is required"));
}

#[test]
fn a_job_is_settled_when_completed_or_when_its_errors_stopped_moving() {
    let job = |status: &str, statuses: &[&str]| {
        let summary: Vec<Value> = statuses.iter().map(|s| json!({"processStatus": s, "usagesCount": 1})).collect();
        json!({"status": status, "usagesSummary": summary})
    };
    assert!(settled(&job("COMPLETED", &["AGGREGATED"])));
    assert!(settled(&job("ERRORS", &["VERIFICATIONFAILED", "AGGREGATED"])));
    assert!(!settled(&job("ERRORS", &["VERIFICATIONFAILED", "VERIFIED"])));
    assert!(!settled(&job("INPROGRESS", &["AGGREGATED"])));
}

#[test]
fn a_chunk_becomes_one_job_with_a_key_of_its_content() {
    let line = |tenant: &str, resource: &str, value: &str| {
        format!(
            r#"{{"tenantId":"{tenant}","application":"app","resource":"{resource}","value":{value},"unit":"u","datetime":"2026-12-01T10:00:00Z"}}"#
        )
    };
    let text = [line("a", "r1", "1"), line("b", "r1", "2"), line("a", "r2", "3"), line("a", "r1", "4")].join("\n");
    let job = job_of(0, &rows(&text), "");
    let body: Value = serde_json::from_slice(&job.body).unwrap();
    assert_eq!(body["users"].as_array().unwrap().len(), 2);
    assert_eq!(body["users"][0]["resources"][0]["usages"].as_array().unwrap().len(), 2);
    assert_eq!(line_of(&job, "users[0].resources[1].usages[0].value must be…"), Some(3));
    assert_eq!(line_of(&job, "users[0].resources[0].usages[1].datetime"), Some(4));
    // The same chunk at the same place gives the same key; another place or any change, another.
    assert_eq!(job.key, job_of(0, &rows(&text), "").key);
    assert!(job.key.starts_with("utsctl-") && job.key.len() == 55);
    assert_ne!(job.key, job_of(1, &rows(&text), "").key);
    assert_ne!(job.key, job_of(0, &rows(&text.replace("\"value\":4", "\"value\":5")), "").key);
    assert!(job_of(0, &rows(&text), "run-7/").key.starts_with("run-7/utsctl-"));
}
