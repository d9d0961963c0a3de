//! The event log, for auditors and admins: filters and a CSV export.

use super::{blocking, render, rfc3339, show_time, AppError, AppState, Ctx, Staff};
use crate::model::{Event, Role};
use crate::store::EventFilter;
use askama::Template;
use axum::extract::{Query, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// An event as the page shows it.
pub struct EventRow {
    id: u64,
    at: String,
    actor: String,
    kind: String,
    enterprise: String,
    request: String,
    source: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    ctx: Ctx,
    events: Vec<EventRow>,
    actor: String,
    kind: String,
    request: String,
    csv: String,
    next: Option<String>,
}

#[derive(serde::Deserialize, Default)]
pub struct EventQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: String,
    before: Option<u64>,
}

fn reads_events(staff: &Staff) -> Result<(), AppError> {
    if staff.user.role == Role::Officer {
        return Err(AppError::Forbidden(
            "the event log is for auditors and admins".into(),
        ));
    }
    Ok(())
}

fn filter(q: &EventQuery) -> Result<EventFilter, AppError> {
    Ok(EventFilter {
        actor: Some(q.actor.trim().to_string()).filter(|s| !s.is_empty()),
        kind: Some(q.kind.trim().to_string()).filter(|s| !s.is_empty()),
        request: match q.request.trim() {
            "" => None,
            r => Some(
                r.trim_start_matches('#')
                    .parse()
                    .map_err(|_| AppError::BadRequest(format!("request {r:?} is not a number")))?,
            ),
        },
        enterprise: None,
        before: q.before,
    })
}

fn query_string(q: &EventQuery, before: Option<u64>) -> String {
    let b = before.map(|b| b.to_string()).unwrap_or_default();
    let mut pairs = vec![
        ("actor", q.actor.as_str()),
        ("kind", q.kind.as_str()),
        ("request", q.request.as_str()),
    ];
    if before.is_some() {
        pairs.push(("before", b.as_str()));
    }
    serde_html_form::to_string(pairs).unwrap_or_default()
}

pub async fn list(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Query(q): Query<EventQuery>,
) -> Result<Response, AppError> {
    reads_events(&staff)?;
    let f = filter(&q)?;
    let store = app.store.clone();
    let page = blocking(move || store.events(&f, 100)).await?;
    Ok(render(&EventsPage {
        ctx: staff.ctx.clone(),
        events: page
            .items
            .into_iter()
            .map(|e| EventRow {
                id: e.id,
                at: show_time(e.at),
                actor: e.actor,
                kind: e.kind,
                enterprise: e.enterprise.map(|x| x.to_string()).unwrap_or_default(),
                request: e.request.map(|x| x.to_string()).unwrap_or_default(),
                source: e.source.unwrap_or_default(),
                detail: e.detail,
            })
            .collect(),
        csv: format!("/events.csv?{}", query_string(&q, None)),
        next: page
            .next
            .map(|n| format!("/events?{}", query_string(&q, Some(n)))),
        actor: q.actor,
        kind: q.kind,
        request: q.request,
    }))
}

/// A CSV field: quoted when needed, and never a formula for spreadsheets.
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_line(e: &Event) -> String {
    [
        e.id.to_string(),
        rfc3339(e.at),
        field(&e.actor),
        field(&e.kind),
        e.enterprise.map(|x| x.to_string()).unwrap_or_default(),
        e.request.map(|x| x.to_string()).unwrap_or_default(),
        field(e.source.as_deref().unwrap_or_default()),
        field(&e.detail),
    ]
    .join(",")
}

/// Every event the filter selects, newest first, as CSV.
pub async fn csv(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Query(q): Query<EventQuery>,
) -> Result<Response, AppError> {
    reads_events(&staff)?;
    let mut f = filter(&q)?;
    let store = app.store.clone();
    let events = blocking(move || {
        let mut all = Vec::new();
        loop {
            let page = store.events(&f, 1000)?;
            all.extend(page.items);
            match page.next {
                Some(n) => f.before = Some(n),
                None => return Ok(all),
            }
        }
    })
    .await?;
    let mut out = String::from("id,time,actor,event,enterprise,request,source,detail\n");
    for e in &events {
        out.push_str(&csv_line(e));
        out.push('\n');
    }
    app.event(
        &staff.user.username,
        "events_exported",
        None,
        None,
        staff.source.clone(),
        format!("{} events", events.len()),
    )
    .await;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ra-web-events.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
    }
}
