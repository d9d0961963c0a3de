//! Issuance through certd, and the worker that retries approved requests
//! certd could not serve (unreachable, locked, rate-limited).
//!
//! Issuing is idempotent end to end: certd sees the request's fixed
//! `request_id` and, for a retry, the same body (the requested notAfter is
//! derived from the time of approval, not of the attempt), so it answers a
//! repeat with the certificate it issued already.

use crate::model::{Request, State};
use crate::web::{App, AppState};
use crate::workflow;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Requests being issued right now (a second attempt waits for the next
/// round instead of racing the first).
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<u64>>);

struct Claim<'a>(&'a InFlight, u64);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0
             .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl InFlight {
    fn claim(&self, id: u64) -> Option<Claim<'_>> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id).then_some(Claim(self, id))
    }
}

/// When the request was approved: the base of its requested notAfter.
fn approved_at(r: &Request) -> i64 {
    r.history
        .iter()
        .rev()
        .find(|t| t.to == State::Approved && t.from != Some(State::Approved))
        .map_or(r.updated_at, |t| t.at)
}

/// Asks certd to issue request `id` if it is approved; returns the request
/// as stored afterwards (`None` when it does not exist).
pub async fn issue(app: &App, id: u64, actor: &str) -> Option<Request> {
    let store = app.store.clone();
    let r = tokio::task::spawn_blocking(move || store.request(id))
        .await
        .ok()?
        .ok()??;
    if r.state != State::Approved {
        return Some(r);
    }
    let Some(_claim) = app.in_flight.claim(id) else {
        return Some(r);
    };
    let req = workflow::issue_request(&r, approved_at(&r));
    let outcome = app.certd.issue(&req).await;
    let now = app.now();
    let actor2 = actor.to_string();
    let store = app.store.clone();
    let result = match &outcome {
        Ok(resp) => {
            let resp = resp.clone();
            // certd's ledger holds the certificate durably; this record of
            // it is committed without an fsync of its own. A crash that loses
            // it leaves the request approved, and the worker's retry gets
            // certd's replay of the same certificate.
            tokio::task::spawn_blocking(move || {
                store.update_request_then(
                    id,
                    |r| {
                        if r.state == State::Approved {
                            workflow::issued(r, &resp, &actor2, now);
                        }
                        Ok::<_, crate::store::StoreError>(())
                    },
                    |r| r.state != State::Issued,
                )
            })
            .await
        }
        Err(e) => {
            let msg = format!("certd: {} ({})", e, e.code());
            let transient = e.is_transient();
            tokio::task::spawn_blocking(move || {
                store.update_request(id, |r| {
                    if r.state == State::Approved {
                        workflow::issue_failed(r, &msg, &actor2, now);
                        r.retry_automatically = transient;
                    }
                    Ok::<_, crate::store::StoreError>(())
                })
            })
            .await
        }
    };
    let stored = match result {
        Ok(Ok((r, ()))) => r,
        Ok(Err(e)) => {
            // certd issued (or refused) but the store could not record it:
            // the request stays approved and the retry gets certd's replay.
            tracing::error!(request = id, error = %e, "cannot record the outcome of issuance");
            return None;
        }
        Err(e) => {
            tracing::error!(request = id, error = %e, "issuance task failed");
            return None;
        }
    };
    match &outcome {
        Ok(resp) => {
            app.request_event(
                actor,
                "request_issued",
                Some(stored.enterprise),
                Some(id),
                None,
                format!("serial {}", resp.serial),
            )
            .await;
            crate::notify::issued(app, &stored).await;
        }
        Err(e) => {
            app.event(
                actor,
                "issuance_failed",
                Some(stored.enterprise),
                Some(id),
                None,
                format!("{} ({})", e, e.code()),
            )
            .await;
        }
    }
    Some(stored)
}

/// Retries, every `every`, approved requests whose last attempt failed for
/// a reason that may pass (and right away when woken).
pub async fn worker(app: AppState, every: Duration) {
    loop {
        let store = app.store.clone();
        let due =
            tokio::task::spawn_blocking(move || store.requests_in_state(State::Approved, 100))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
        for r in due {
            if r.last_error.is_none() || r.retry_automatically {
                issue(&app, r.id, "ra-web").await;
            }
        }
        tokio::select! {
            _ = app.issue_wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}
