//! Notifications by mail: queued in the store first, then delivered by a
//! worker (SMTP with STARTTLS or TLS, or an outbox directory of `.eml`
//! files), retried with back-off when the relay is down, and shown on the
//! request's page with their delivery state.

use crate::config::{MailConfig, SmtpSecurity};
use crate::model::{Mail, MailState, Request, Token};
use crate::web::{random_token, App, AppState};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Attempts before a mail is given up (and shown as failed).
pub const MAX_ATTEMPTS: u32 = 8;

/// The purpose of pickup tokens.
pub const PICKUP: &str = "pickup";

async fn queue(
    app: &App,
    r: &Request,
    subject: String,
    body: String,
    attachments: Vec<(String, String, Vec<u8>)>,
) {
    let Some(to) = r.notify_email.clone() else {
        return;
    };
    if app.config.mail.from.is_none() {
        return;
    }
    let now = app.now();
    let m = Mail {
        id: 0,
        request: Some(r.id),
        to,
        subject,
        body,
        attachments,
        state: MailState::Queued,
        attempts: 0,
        next_attempt: now,
        last_error: None,
        created_at: now,
    };
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.queue_mail(m)).await {
        Ok(Ok(_)) => app.mail_wake.notify_one(),
        Ok(Err(e)) => tracing::error!(request = r.id, error = %e, "cannot queue a notification"),
        Err(e) => tracing::error!(request = r.id, error = %e, "cannot queue a notification"),
    }
}

/// "We received your request".
pub async fn request_received(app: &App, r: &Request) {
    let body = format!(
        "Your certificate request for {} was received.\n\nPickup ID: {}\nQuote it when you contact the registration authority.\n",
        r.title(),
        r.pickup_id
    );
    queue(
        app,
        r,
        format!("Certificate request {} received", r.pickup_id),
        body,
        Vec::new(),
    )
    .await;
}

/// "Your request was rejected", with the reason.
pub async fn rejected(app: &App, r: &Request) {
    let body = format!(
        "Your certificate request {} for {} was rejected.\n\nReason: {}\n",
        r.pickup_id,
        r.title(),
        r.reject_reason.as_deref().unwrap_or("none given")
    );
    queue(
        app,
        r,
        format!("Certificate request {} rejected", r.pickup_id),
        body,
        Vec::new(),
    )
    .await;
}

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// "Your certificate was issued": a pickup link, or the certificate
/// attached (per `[mail] attach_certificate`).
pub async fn issued(app: &App, r: &Request) {
    if r.notify_email.is_none() || app.config.mail.from.is_none() {
        return;
    }
    let serial = r.serial.clone().unwrap_or_default();
    let mut body = format!(
        "Your certificate request {} for {} was approved and the certificate issued (serial {serial}).\n\n",
        r.pickup_id,
        r.title()
    );
    let mut attachments = Vec::new();
    if app.config.mail.attach_certificate {
        let pem = ra_core::formats::pem_bundle(
            r.certificate_pem.as_deref().unwrap_or_default(),
            &r.chain,
        );
        attachments.push((
            format!("{}.pem", r.pickup_id),
            "application/pem-certificate-chain".into(),
            pem.into_bytes(),
        ));
        body.push_str("The certificate and its chain are attached (PEM).\n");
    } else {
        let token = random_token(32);
        let hours = app.config.mail.pickup_link_hours;
        let t = Token {
            purpose: PICKUP.into(),
            request: r.id,
            expires_at: app.now() + i64::from(hours) * 3600,
        };
        let store = app.store.clone();
        let hash = token_hash(&token);
        if let Err(e) = tokio::task::spawn_blocking(move || store.put_token(&hash, &t)).await {
            tracing::error!(error = %e, "cannot store a pickup token");
            return;
        }
        let mut url = app.config.server.public_url.clone();
        url.set_path(&format!("/pickup/{token}"));
        body.push_str(&format!(
            "Download it within {hours} hours at:\n\n{url}\n\nThe link works only for this certificate.\n"
        ));
    }
    queue(
        app,
        r,
        format!("Certificate {} issued", r.pickup_id),
        body,
        attachments,
    )
    .await;
}

/// Where mail goes.
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

fn transport(cfg: &MailConfig) -> Result<Option<Transport>, String> {
    if let Some(dir) = &cfg.outbox_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("outbox {}: {e}", dir.display()))?;
        return Ok(Some(Transport::Outbox(AsyncFileTransport::new(dir))));
    }
    let Some(smtp) = &cfg.smtp else {
        return Ok(None);
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(smtp.timeout_seconds)));
    if smtp.security != SmtpSecurity::None {
        let mut params = TlsParameters::builder(smtp.host.clone());
        if let Some(ca) = &smtp.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("[mail.smtp] ca_file {}: {e}", ca.display()))?;
            let cert =
                Certificate::from_pem(&pem).map_err(|e| format!("[mail.smtp] ca_file: {e}"))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| format!("SMTP TLS: {e}"))?;
        b = b.tls(match smtp.security {
            SmtpSecurity::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let (Some(user), Some(file)) = (&smtp.username, &smtp.password_file) {
        let password = zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| format!("[mail.smtp] password_file {}: {e}", file.display()))?,
        );
        b = b.credentials(Credentials::new(
            user.clone(),
            password.trim_end().to_string(),
        ));
    }
    Ok(Some(Transport::Smtp(b.build())))
}

fn message(from: &str, m: &Mail) -> Result<Message, String> {
    let from: Mailbox = from.parse().map_err(|e| format!("from: {e}"))?;
    let to: Mailbox =
        m.to.parse()
            .map_err(|e| format!("recipient {}: {e}", m.to))?;
    let b = Message::builder()
        .from(from)
        .to(to)
        .subject(m.subject.clone());
    let text = SinglePart::plain(m.body.clone());
    if m.attachments.is_empty() {
        b.singlepart(text)
    } else {
        let mut mp = MultiPart::mixed().singlepart(text);
        for (name, mime, bytes) in &m.attachments {
            let ct =
                ContentType::parse(mime).map_err(|e| format!("attachment type {mime}: {e}"))?;
            mp = mp.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        b.multipart(mp)
    }
    .map_err(|e| format!("building the mail: {e}"))
}

/// Delay before attempt `attempts + 1`: `base` doubling, at most an hour.
fn backoff(base: u32, attempts: u32) -> i64 {
    (i64::from(base) << attempts.saturating_sub(1).min(12)).min(3600)
}

/// Delivers queued mail until the process ends.
pub async fn worker(app: AppState, every: Duration) {
    let Some(from) = app.config.mail.from.clone() else {
        return;
    };
    let transport = match transport(&app.config.mail) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "mail delivery is not possible; notifications stay queued");
            return;
        }
    };
    let smtp_deadline = Duration::from_secs(
        app.config
            .mail
            .smtp
            .as_ref()
            .map_or(30, |s| s.timeout_seconds),
    );
    loop {
        let now = app.now();
        let store = app.store.clone();
        let due = tokio::task::spawn_blocking(move || store.due_mail(now, 50))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for mut m in due {
            let sent = match message(&from, &m) {
                Err(e) => Err((e, false)),
                Ok(msg) => match &transport {
                    // lettre bounds the TCP connect only: a relay that
                    // accepts and never answers is bounded here.
                    Transport::Smtp(t) => {
                        match tokio::time::timeout(smtp_deadline, t.send(msg)).await {
                            Ok(r) => r.map(|_| ()).map_err(|e| {
                                let permanent = e.is_permanent();
                                (e.to_string(), !permanent)
                            }),
                            Err(_) => Err((
                                format!(
                                    "the SMTP relay did not answer within {} s",
                                    smtp_deadline.as_secs()
                                ),
                                true,
                            )),
                        }
                    }
                    Transport::Outbox(t) => t
                        .send(msg)
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.to_string(), true)),
                },
            };
            m.attempts += 1;
            let now = app.now();
            match sent {
                Ok(()) => {
                    m.state = MailState::Sent;
                    m.last_error = None;
                }
                Err((e, retry)) => {
                    tracing::warn!(mail = m.id, error = %e, "a notification could not be delivered");
                    m.last_error = Some(e);
                    if retry && m.attempts < MAX_ATTEMPTS {
                        m.next_attempt =
                            now + backoff(app.config.mail.retry_base_seconds, m.attempts);
                    } else {
                        m.state = MailState::Failed;
                    }
                }
            }
            let store = app.store.clone();
            let (id, state, request) = (m.id, m.state, m.request);
            let detail = m
                .last_error
                .clone()
                .unwrap_or_else(|| format!("to {}", m.to));
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.put_mail(&m)).await {
                tracing::error!(mail = id, error = %e, "cannot record a delivery");
            }
            let kind = match state {
                MailState::Sent => "mail_sent",
                MailState::Queued => "mail_deferred",
                MailState::Failed => "mail_failed",
            };
            app.event("ra-web", kind, None, request, None, detail).await;
        }
        // Sleep until the next mail is due (at most `every`), or until a
        // new one is queued.
        let store = app.store.clone();
        let next = tokio::task::spawn_blocking(move || store.next_mail_due())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let wait = match next {
            Some(at) => Duration::from_secs(u64::try_from(at - app.now()).unwrap_or(0)).min(every),
            None => every,
        };
        tokio::select! {
            _ = app.mail_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(30, 1), 30);
        assert_eq!(backoff(30, 2), 60);
        assert_eq!(backoff(30, 3), 120);
        assert_eq!(backoff(30, 20), 3600);
    }

    #[test]
    fn mails_are_built_with_attachments() {
        let m = Mail {
            id: 1,
            request: Some(1),
            to: "alice@example.com".into(),
            subject: "Certificate issued".into(),
            body: "Hello".into(),
            attachments: vec![(
                "a.pem".into(),
                "application/pem-certificate-chain".into(),
                b"x".to_vec(),
            )],
            state: MailState::Queued,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            created_at: 0,
        };
        let msg = message("ra@example.com", &m).expect("builds");
        let text = String::from_utf8(msg.formatted()).expect("utf-8");
        assert!(text.contains("Subject: Certificate issued"), "{text}");
        assert!(text.contains("a.pem"), "{text}");
        assert!(message("not an address", &m).is_err());
    }
}
