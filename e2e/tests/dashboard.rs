//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, started here), against the whole pipeline. The page must show a job posted by
//! the test, follow its status on screen to COMPLETED, pick up a job posted while it is open,
//! show a job's errors, filter and page the list, keep markup as text, show its usage summary and the monthly KPI
//! with its daily chart, never show another tenant's job, and show a provider administrator its
//! own rules and KPIs only.

use std::net::TcpListener;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{Datelike, SecondsFormat, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uts_common::auth::mint_hs256;
use uts_e2e::{Pipeline, SECRET};

const WAIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver and a browser session; the driver dies with the test.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn start() -> Self {
        let driver_path = std::env::var("UTS_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
        let chromium = std::env::var("UTS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        for path in [&driver_path, &chromium] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the dashboard test needs Debian's chromium and chromium-driver (deploy/local/test.sh installs them)"
            );
        }
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--disable-background-networking", "--disable-extensions", "--no-first-run", "--window-size=1280,1000"]}),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(Instant::now() < deadline, "no browser session from chromedriver: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Self { client, _driver: driver }
    }

    /// Waits until `css` matches an element whose text satisfies `done`; returns that text.
    async fn text_until(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                last = element.text().await.unwrap_or_default();
                if done(&last) {
                    return last;
                }
            }
            assert!(Instant::now() < deadline, "{css} never showed the expected text; last: {last:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// With UTS_SCREENSHOT_DIR set, saves what the browser shows as `<name>.png` there.
    async fn screenshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("UTS_SCREENSHOT_DIR") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
        }
    }

    /// The list shows one day, today by default; a job received before midnight is on the day
    /// before, so the filter is set to the job's day whenever they differ.
    async fn show_day_of(&self, pipeline: &Pipeline, tenant: &str, job_id: &str) {
        let job = pipeline.get_json(&format!("/api/usagetransparency/v3/usagesJobs/{job_id}"), &reader(tenant)).await;
        let day = job["time"].as_str().unwrap()[..10].to_owned();
        let script = "const input = document.getElementById('filter-date');
                      if (input.value !== arguments[0]) { input.value = arguments[0]; document.getElementById('jobs-filter').requestSubmit(); }";
        self.client.execute(script, vec![json!(day)]).await.unwrap();
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }
}

fn reader(tenant: &str) -> String {
    mint_hs256(SECRET, tenant, "dashboard@example.com", &["uts.usages.read", "uts.aggregates.read"], 600).unwrap()
}

fn job(tenant: &str, values: &[&str]) -> Value {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let usages: Vec<Value> = values
        .iter()
        .map(|v| json!({"value": Value::from_str(v).unwrap(), "unit": "dash-unit", "datetime": now}))
        .collect();
    json!({"users":[{"tenantId": tenant, "userId": "someone", "resources":[{"application": "app", "resource": "a1", "usages": usages}]}]})
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_dashboard_follows_a_job_to_completed_and_shows_only_the_tenants_own(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    sqlx::query("INSERT INTO rules (application, unit, owner_tenant_id, billing_enabled) VALUES ('app', 'dash-unit', 'prov', true)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO kpis (name, display_name, application, application_display_name, unit, owner_tenant_id,
                           aggregation_function_daily, aggregation_function_monthly, pre_fill, unit_conversion_factor)
         VALUES ('dash-kpi', 'Dash KPI', 'app', 'The App', 'dash-unit', 'prov', 'SUM', 'SUM', 'ZERO', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // op's job (2.5 + 4 = 6.5 today) and a job of another submitter, prov; wait until the query
    // service has prov's, so that its absence on op's page means something.
    let own = pipeline.post_job("op", &job("op", &["2.5", "4"])).await;
    let foreign = pipeline.post_job("prov", &job("prov", &["1"])).await;
    pipeline.wait_for_job_status("prov", &foreign, "COMPLETED", WAIT).await;

    let browser = Browser::start().await;
    // The page and every API call it makes go through the one address (the gateway).
    let base = format!("http://{}", pipeline.gateway);

    // The page is served with its Content-Security-Policy: own scripts, styles and requests
    // only, no framing.
    let page = pipeline.client.get(format!("{base}/ui/")).send().await.unwrap();
    let policy = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(directive), "{directive} missing from {policy:?}");
    }

    // A bad token is refused with the API's message, and the page stays at sign-in.
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.fill("#token-input", "not-a-token").await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.text_until("#notice", |t| t.contains("Signed out")).await;
    assert!(browser.client.find(Locator::Css("#sign-in-view")).await.unwrap().is_displayed().await.unwrap());

    // Signed in as op through the URL fragment: the job appears and reaches COMPLETED on screen.
    browser.client.goto(&format!("{base}/ui/#token={}", reader("op"))).await.unwrap();
    let url = browser.client.current_url().await.unwrap();
    assert!(url.fragment().is_none(), "the token is wiped from the address bar: {url}");
    browser.text_until("#session-tenant", |t| t == "op").await;
    browser.show_day_of(&pipeline, "op", &own).await;
    let row = format!("tr[data-job-id='{own}']");
    browser.text_until(&format!("{row} .job-status"), |t| t == "COMPLETED").await;
    assert_eq!(browser.text_until(&format!("{row} td.num"), |t| !t.is_empty()).await, "2");
    assert_eq!(browser.count(&format!("tr[data-job-id='{foreign}']")).await, 0, "prov's job on op's page");
    assert_eq!(browser.count("#jobs-table tbody tr").await, 1);

    // The job's summary: both usages RECEIVEDFORBILLING, no errors.
    browser.click(&format!("{row} button")).await;
    browser.text_until("#job-status", |t| t == "COMPLETED").await;
    let summary = browser.text_until("#summary-table tbody tr", |t| t.contains("RECEIVEDFORBILLING")).await;
    assert_eq!(summary.split_whitespace().collect::<Vec<_>>(), ["app", "dash-unit", "RECEIVEDFORBILLING", "2"]);
    assert!(browser.client.find(Locator::Css("#errors-empty")).await.unwrap().is_displayed().await.unwrap());
    browser.screenshot("dashboard-job").await;
    browser.click("#job-close").await;
    assert!(!browser.client.find(Locator::Css("#job-detail")).await.unwrap().is_displayed().await.unwrap());

    // The page follows new jobs by itself (the list refreshes every 2 s): a job posted now, with
    // the page open, appears and reaches its final status on screen without a reload. Its usage
    // fails verification (buyer is a customer tenant), and its application is markup: the errors
    // panel shows the error, the summary shows the markup as text.
    let hostile = "<img src=x onerror=alert(1)>";
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let failing = pipeline
        .post_job(
            "op",
            &json!({"users":[{"tenantId": "buyer", "userId": "someone", "resources":[{"application": hostile,
                "resource": "a1", "usages": [{"value": 1, "unit": "dash-unit", "datetime": now}]}]}]}),
        )
        .await;
    browser.show_day_of(&pipeline, "op", &failing).await;
    let failing_row = format!("tr[data-job-id='{failing}']");
    browser.text_until(&format!("{failing_row} .job-status"), |t| t == "ERRORS").await;
    browser.click(&format!("{failing_row} button")).await;
    let summary = browser.text_until("#summary-table tbody tr", |t| t.contains("VERIFICATIONFAILED")).await;
    assert!(summary.contains(hostile), "markup shown as text: {summary}");
    assert_eq!(browser.count("#job-detail img").await, 0, "markup rendered as an element");
    let errors = browser.text_until("#errors-table tbody", |t| t.contains("tenantNotAllowed")).await;
    assert_eq!(browser.count("#errors-table tbody tr").await, 1, "{errors}");
    // The errors panel's class filter: no billing error, the validation error again.
    browser.client.find(Locator::Css("#error-class")).await.unwrap().select_by_value("billing").await.unwrap();
    browser.text_until("#errors-pager .pager-text", |t| t.contains("(0 in all)")).await;
    assert!(browser.client.find(Locator::Css("#errors-empty")).await.unwrap().is_displayed().await.unwrap());
    browser.client.find(Locator::Css("#error-class")).await.unwrap().select_by_value("validation").await.unwrap();
    browser.text_until("#errors-table tbody", |t| t.contains("tenantNotAllowed")).await;
    browser.click("#job-close").await;

    // Filters: an application no job has shows none; the job's application shows only it.
    browser.fill("#filter-application", "no-such-app").await;
    browser.click("#jobs-filter button[type=submit]").await;
    browser.text_until("#jobs-pager .pager-text", |t| t.contains("(0 in all)")).await;
    assert!(browser.client.find(Locator::Css("#jobs-empty")).await.unwrap().is_displayed().await.unwrap());
    browser.fill("#filter-application", hostile).await;
    browser.click("#jobs-filter button[type=submit]").await;
    browser.text_until("#jobs-pager .pager-text", |t| t.contains("(1 in all)")).await;
    assert_eq!(browser.count(&format!("#jobs-table {failing_row}")).await, 1);
    browser.fill("#filter-application", "").await;

    // Paging: 12 jobs at 10 a page are two pages, the second holding the 2 oldest.
    // (Another unit: the KPI checked below counts dash-unit only.)
    let mut paged = job("op", &["1"]);
    paged["users"][0]["resources"][0]["usages"][0]["unit"] = json!("page-unit");
    for _ in 0..10 {
        pipeline.post_job("op", &paged).await;
    }
    browser.client.find(Locator::Css("#filter-size")).await.unwrap().select_by_label("10").await.unwrap();
    browser.click("#jobs-filter button[type=submit]").await;
    browser.text_until("#jobs-pager .pager-text", |t| t == "Page 1 of 2 (12 in all)").await;
    assert_eq!(browser.count("#jobs-table tbody tr").await, 10);
    browser.click("#jobs-pager button[data-step='1']").await;
    browser.text_until("#jobs-pager .pager-text", |t| t == "Page 2 of 2 (12 in all)").await;
    assert_eq!(browser.count("#jobs-table tbody tr").await, 2);
    assert_eq!(browser.count(&format!("tr[data-job-id='{own}']")).await, 1, "the oldest job is on the last page");
    browser.click("#jobs-pager button[data-step='-1']").await;
    browser.text_until("#jobs-pager .pager-text", |t| t.starts_with("Page 1 of 2")).await;

    // Monthly KPI as consumer: 6.5, and today's bar in the chart carries the day's value. The
    // list offers prov's KPI (op has usages of it); typed in by hand here.
    browser.click("#tab-kpis").await;
    browser.text_until("#kpi-choice", |t| t.contains("Dash KPI · The App (from prov)")).await;
    browser.fill("#kpi-provider", "prov").await;
    browser.fill("#kpi-application", "app").await;
    browser.fill("#kpi-name", "dash-kpi").await;
    browser.click("#kpi-form button[type=submit]").await;
    browser.text_until("#kpi-value", |t| t == "6.5").await;
    let today = Utc::now().date_naive().to_string();
    let bar = browser.client.find(Locator::Css(&format!("#kpi-chart rect[data-date='{today}']"))).await.unwrap();
    assert_eq!(bar.attr("data-value").await.unwrap().as_deref(), Some("6.5"));
    // preFill ZERO: a bar for every day of the month so far, all but today's at 0.
    assert_eq!(browser.count("#kpi-chart rect.bar").await, Utc::now().day() as usize);
    assert_eq!(browser.count("#kpi-chart rect.bar[data-value='0']").await, Utc::now().day() as usize - 1);

    browser.screenshot("dashboard-kpi-consumer").await;

    // Signed out, then in as prov through the form: its own job only, and op as its consumer.
    browser.click("#sign-out").await;
    browser.fill("#token-input", &reader("prov")).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.show_day_of(&pipeline, "prov", &foreign).await;
    browser.text_until(&format!("tr[data-job-id='{foreign}'] .job-status"), |t| t == "COMPLETED").await;
    assert_eq!(browser.count(&format!("tr[data-job-id='{own}']")).await, 0, "op's job on prov's page");
    assert!(
        !browser.client.find(Locator::Css("#notice")).await.unwrap().is_displayed().await.unwrap(),
        "no error after switching tenants"
    );
    browser.click("#tab-kpis").await;
    browser.text_until("#kpi-choice", |t| t.contains("Dash KPI · The App (yours)")).await;
    browser.client.find(Locator::Css("#kpi-choice")).await.unwrap().select_by_value("0").await.unwrap();
    let consumers = browser.text_until("#kpi-consumers tbody", |t| t.contains("op")).await;
    assert_eq!(consumers.split_whitespace().collect::<Vec<_>>(), ["op", "6.5", "prov", "1"]);
    browser.screenshot("dashboard-kpi-provider").await;
    // A reader has no Rules & KPIs tab.
    assert!(!browser.client.find(Locator::Css("#tab-admin")).await.unwrap().is_displayed().await.unwrap());

    // prov as a provider administrator: its own rules and KPIs (one with a name that is markup,
    // shown as text), none of op's.
    sqlx::query(
        "INSERT INTO rules (application, unit, owner_tenant_id) VALUES ('app', '<b>bold</b>', 'prov'), ('op-app', 'op-unit', 'op')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO kpis (name, display_name, application, application_display_name, unit, owner_tenant_id)
         VALUES ('op-kpi', 'Op KPI', 'op-app', 'Op App', 'op-unit', 'op')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let provider_admin =
        mint_hs256(SECRET, "prov", "dashboard@example.com", &["uts.usages.read", "uts.provider.admin"], 600).unwrap();
    browser.click("#sign-out").await;
    browser.fill("#token-input", &provider_admin).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.click("#tab-admin").await;
    browser.text_until("#admin-scope", |t| t.contains("owned by prov")).await;
    let rules = browser.text_until("#rules-table tbody", |t| t.contains("dash-unit")).await;
    assert!(rules.contains("<b>bold</b>"), "markup shown as text: {rules}");
    assert_eq!(browser.count("#rules-table tbody b").await, 0, "markup rendered as an element");
    assert!(!rules.contains("op-unit"), "op's rule on prov's page: {rules}");
    assert_eq!(browser.count("#rules-table tbody tr").await, 2);
    let kpis = browser.text_until("#admin-kpis-table tbody", |t| t.contains("dash-kpi")).await;
    assert!(!kpis.contains("op-kpi"), "op's KPI on prov's page: {kpis}");
    assert_eq!(browser.count("#admin-kpis-table tbody tr").await, 1);
    browser.screenshot("dashboard-provider-admin").await;

    browser.client.close().await.unwrap();
}
