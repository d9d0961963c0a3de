//! Prometheus metrics of ra-web, in the OpenMetrics text format, on a
//! listener of their own (`[metrics] listen`, loopback only, or a socket
//! systemd passes named `metrics`), off by default.
//!
//! Counted as they happen, from the one place every event is recorded
//! ([`crate::web::App`]'s event writer): events by kind, and sign-ins by
//! result (`succeeded`, `failed`, `throttled`). Read from the store at each
//! scrape: requests by state (from the index) and mails queued or failed
//! for good. Label values are the code's own kinds and states, never input.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::State;
use crate::web::App;

/// The Content-Type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The counters ra-web keeps while it runs.
#[derive(Default)]
pub struct Metrics {
    events: Family<KindLabels, Counter>,
    sign_ins: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts an event of `kind` as it is recorded.
    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
        let result = match kind {
            "sign_in" => "succeeded",
            "sign_in_failed" => "failed",
            "sign_in_throttled" => "throttled",
            _ => return,
        };
        self.sign_ins.get_or_create(&ResultLabels { result }).inc();
    }

    /// The whole exposition, as of now (reads the store: run it off the
    /// async threads).
    pub fn render(&self, app: &App) -> Result<String, crate::store::StoreError> {
        let mut registry = Registry::with_prefix("ra_web");
        registry.register(
            "events",
            "Events recorded in ra-web's event log, by kind",
            self.events.clone(),
        );
        // Every result present from the start, so a rate is defined.
        for result in ["succeeded", "failed", "throttled"] {
            self.sign_ins
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        registry.register(
            "sign_ins",
            "Sign-in attempts by result (succeeded, failed, throttled)",
            self.sign_ins.clone(),
        );
        let requests = Family::<StateLabels, Gauge>::default();
        for state in State::ALL {
            let n = app.store.count_in_state(state)?;
            requests
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        registry.register("requests", "Requests by state", requests);
        let (queued, failed) = app.store.mail_counts()?;
        let mails = Family::<StateLabels, Gauge>::default();
        mails
            .get_or_create(&StateLabels { state: "queued" })
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        mails
            .get_or_create(&StateLabels { state: "failed" })
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
        registry.register(
            "mails",
            "Notifications waiting for a delivery attempt (queued) or given up (failed)",
            mails,
        );
        let info = Family::<VersionLabels, Gauge<i64, AtomicI64>>::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("build_info", "The running ra-web's version", info);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(app: crate::web::AppState, listener: tokio::net::TcpListener) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(app): axum::extract::State<crate::web::AppState>| async move {
                    let rendered =
                        tokio::task::spawn_blocking(move || app.metrics.render(&app)).await;
                    match rendered {
                        Ok(Ok(body)) => {
                            ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "cannot read the store for the metrics");
                            StatusCode::INTERNAL_SERVER_ERROR.into_response()
                        }
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                },
            ),
        )
        .with_state(app);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}
