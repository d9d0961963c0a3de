//! ra-web's metrics listener (a socket named `metrics`), scraped after
//! sign-ins that fail and succeed and requests created and cancelled: the
//! counters match what was done and the event log, the gauges match the
//! requests' states, and the exposition passes the Prometheus project's
//! OpenMetrics parser.
#![forbid(unsafe_code)]

use certd_e2e::api::{make_csr, make_key, KeyAlg, API_DEADLINE};
use certd_e2e::metrics::{scrape, Scrape};
use certd_e2e::poll_until;
use certd_e2e::web::{file_in, state_dir, WebCa};
use ra_web::store::{EventFilter, Store};
use std::collections::BTreeMap;

/// Events by kind: every event in the store at `dir`.
fn store_kinds(store: &Store) -> BTreeMap<String, f64> {
    let mut f = EventFilter::default();
    let mut kinds = BTreeMap::new();
    loop {
        let page = store.events(&f, 1000).expect("events");
        for e in page.items {
            *kinds.entry(e.kind).or_default() += 1.0;
        }
        match page.next {
            Some(n) => f.before = Some(n),
            None => return kinds,
        }
    }
}

/// Events by kind in the event log's CSV export (the `event` column).
fn csv_kinds(csv: &str) -> BTreeMap<String, f64> {
    let mut kinds = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let kind = line.split(',').nth(3).expect("an event column");
        *kinds.entry(kind.to_string()).or_default() += 1.0;
    }
    kinds
}

fn counted(m: &Scrape) -> BTreeMap<String, f64> {
    m.all("ra_web_events_total")
        .into_iter()
        .map(|s| (s.labels["kind"].clone(), s.value))
        .collect()
}

#[test]
fn the_metrics_count_sign_ins_requests_and_events() {
    // What the event log held before this ra-web started (the admin
    // account made by `ra-web create-admin`): not this process's to count.
    let mut before = BTreeMap::new();
    let mut ca = WebCa::start_with(|env| {
        let store = Store::open(&state_dir(env)).expect("ra-web's store");
        before = store_kinds(&store);
    });
    let m = scrape(&ca.metrics_url);
    assert_eq!(
        m.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(m.get("ra_web_sign_ins_total", &[("result", "failed")]), 0.0);

    let (admin_user, _) = ca.admin();
    for _ in 0..2 {
        let r = ca.session().sign_in(&admin_user, "not the password at all");
        assert_ne!(r.status, 303, "a wrong password does not sign in: {r}");
    }
    let mut admin = ca.admin_session();
    admin.add_enterprise("Example Corp");
    admin.add_user("olga", "officer", Some("1"));
    let mut olga = ca.officer("olga");
    let dir = ca.dir.path().to_path_buf();
    let key = make_key(&dir, "sub", KeyAlg::P256);
    let csr = make_csr(
        &dir,
        "sub",
        &key,
        "/CN=www.example.com",
        &["DNS:www.example.com"],
    );
    let csr = file_in(&dir, "www.csr", csr.pem.as_bytes());
    let first = olga.create_request(&csr, "owner@example.com");
    let second = olga.create_request(&csr, "owner@example.com");
    let r = olga.post(&format!("/requests/{second}/cancel"), &[]);
    assert_eq!(r.status, 303, "{r}");
    let first_state = olga.request_state(first);

    // The event log is written by more than the test's requests (the mail
    // worker records deliveries): compare once both have settled.
    let m = poll_until(
        API_DEADLINE,
        "the metrics' events to match the event log",
        || {
            let m = scrape(&ca.metrics_url);
            let csv = admin.get("/events.csv");
            assert_eq!(csv.status, 200, "{csv}");
            let mut logged = csv_kinds(&String::from_utf8_lossy(&csv.body));
            for (kind, n) in &before {
                let left = logged.get(kind).copied().unwrap_or(0.0) - n;
                if left == 0.0 {
                    logged.remove(kind);
                } else {
                    logged.insert(kind.clone(), left);
                }
            }
            // (An export is recorded after its CSV is made, and after this
            // scrape: both hold the earlier exports only.)
            (counted(&m) == logged).then_some(m)
        },
        || {
            format!(
                "{}",
                String::from_utf8_lossy(&std::fs::read(&ca.log).unwrap_or_default())
            )
        },
    );
    println!("{}", m.text);

    assert_eq!(m.get("ra_web_sign_ins_total", &[("result", "failed")]), 2.0);
    assert_eq!(
        m.get("ra_web_sign_ins_total", &[("result", "succeeded")]),
        2.0
    );
    assert_eq!(
        m.get("ra_web_sign_ins_total", &[("result", "throttled")]),
        0.0
    );
    assert_eq!(m.kind("ra_web_sign_ins"), Some("counter"));

    // Requests by state: one cancelled, the other where its page says.
    let states: BTreeMap<String, f64> = m
        .all("ra_web_requests")
        .into_iter()
        .map(|s| (s.labels["state"].clone(), s.value))
        .collect();
    assert_eq!(states.len(), 7, "every state is exported: {states:?}");
    assert_eq!(states.values().sum::<f64>(), 2.0, "{states:?}");
    assert_eq!(states["cancelled"], 1.0, "{states:?}");
    let shown = first_state.to_lowercase().replace(' ', "_");
    assert_eq!(
        states[&shown], 1.0,
        "request {first} is {first_state}: {states:?}"
    );
    assert_eq!(m.kind("ra_web_requests"), Some("gauge"));

    // The demo delivers to an outbox: nothing failed.
    assert_eq!(m.get("ra_web_mails", &[("state", "failed")]), 0.0);
    assert!(m.value("ra_web_mails", &[("state", "queued")]).is_some());
    assert_eq!(
        m.get(
            "ra_web_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    ca.restart_ra_web();
    // Counters start again with the process; the gauges come from the store.
    let m = scrape(&ca.metrics_url);
    assert_eq!(m.get("ra_web_sign_ins_total", &[("result", "failed")]), 0.0);
    assert_eq!(m.get("ra_web_requests", &[("state", "cancelled")]), 1.0);
}
