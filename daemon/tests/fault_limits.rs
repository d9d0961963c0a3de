//! Resource limits under hostile connections, all on 127.0.0.1, bounded in
//! count and time: `api.max_connections`, `handshake_timeout_secs`,
//! `header_timeout_secs`, `request_timeout_secs` and `idle_timeout_secs`.
//!
//! - Hundreds of idle and slow connections (silent TCP, TLS bytes trickled,
//!   and slow-loris: authenticated TLS, then request headers one byte per
//!   second) never hold more than `max_connections` sockets in certd, are all
//!   dropped after their timeouts, and a well-behaved RA still gets its
//!   certificate within a few seconds.
//! - An authenticated connection that sends nothing, or sends its body
//!   slowly, is dropped after `idle_timeout_secs` / `request_timeout_secs`,
//!   so a stolen RA credential cannot hold every slot.
//!
//! - A body over `max_body_bytes` is refused with 413 `body_too_large`,
//!   announced or chunked; one of exactly that size is read.
//! - A client that never completes its TLS handshake is cut at
//!   `handshake_timeout_secs`.
#![forbid(unsafe_code)]

use certd_e2e::api::{make_csr, make_key, ApiCaBuilder, ApiDaemon, KeyAlg, RaCredential};
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

const SILENT_TCP: usize = 150;
const TRICKLING_TLS: usize = 50;
const SLOW_LORIS: usize = 50;

fn ca(dir: &Path) -> ApiDaemon {
    ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml("[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n")
        .api(&format!(
            "max_connections = {MAX_CONNECTIONS}\nhandshake_timeout_secs = {}\n\
             header_timeout_secs = {}\nrequest_timeout_secs = {}\nidle_timeout_secs = {}\n\
             max_body_bytes = 8192",
            HANDSHAKE_TIMEOUT.as_secs(),
            HEADER_TIMEOUT.as_secs(),
            REQUEST_TIMEOUT.as_secs(),
            IDLE_TIMEOUT.as_secs()
        ))
        .ra(
            "ra-main",
            "certifiers = [\"ca\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]",
        )
        .build()
        .start()
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with `cred`, speaking HTTP/1.1.
fn tls_connect(port: u16, server_ca: &Path, cred: &RaCredential) -> Tls {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(server_ca).expect("server CA") {
        roots.add(ca.expect("server CA PEM")).expect("server CA");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cred.cert)
        .expect("client certificate")
        .collect::<Result<_, _>>()
        .expect("client certificate PEM");
    let key = PrivateKeyDer::from_pem_file(&cred.key).expect("client key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client credential");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    Tls::new(conn, tcp)
}

/// Whether certd has closed `tls` (EOF, reset, or an answer followed by
/// a close). Does not block.
fn tls_closed(tls: &mut Tls) -> bool {
    tls_drain(tls, &mut Vec::new())
}

/// Like [`tls_closed`], keeping what certd sent in `received`.
fn tls_drain(tls: &mut Tls, received: &mut Vec<u8>) -> bool {
    if tls.sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tls.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = tls.sock.set_nonblocking(false);
    closed
}

fn tcp_closed(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match tcp.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Established connections on `port` that process `pid` holds, from /proc.
fn established(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list certd's descriptors in /proc/{pid}/fd: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port_hex = format!(":{port:04X}");
    // Distinct inodes: /proc/net/tcp is read in pages and can repeat a line
    // when sockets come and go between two reads.
    let held: HashSet<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "01" && inodes.contains(f[9]))
                .then(|| f[9].to_string())
        })
        .collect();
    held.len()
}

/// Issues one certificate as `ra-main`; returns how long it took.
fn issue_one(d: &ApiDaemon, csr: &str, id: &str) -> Result<Duration, String> {
    let client = d.client("ra-main");
    let req = certd_api::IssueRequest::new(id, "tls-server", csr);
    let began = Instant::now();
    d.block_on(client.issue(&req))
        .map(|_| began.elapsed())
        .map_err(|e| e.to_string())
}

#[test]
fn idle_and_slow_connections_are_dropped_and_a_good_client_is_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca(tmp.path());
    let (port, pid) = (d.ca.port, d.instance.pid());
    let key = make_key(tmp.path(), "good", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "good", &key, "/CN=good.example.com", &[]).pem;
    let cred = d.ca.ra("ra-main").clone();
    let head = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n";
    let began = Instant::now();

    // Slow-loris: authenticated, then headers one byte per second.
    let mut loris: Vec<(Tls, Instant, Option<Duration>)> = (0..SLOW_LORIS)
        .map(|_| {
            let mut t = tls_connect(port, &d.ca.tls.ca_cert, &cred);
            t.write_all(&head[..1]).expect("first header byte");
            (t, Instant::now(), None)
        })
        .collect();
    // Silent TCP connections and ones trickling a TLS record header.
    let mut idle: Vec<(TcpStream, bool, Option<Duration>)> = (0..SILENT_TCP + TRICKLING_TLS)
        .map(|i| {
            let t = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            t.set_nonblocking(true).expect("non-blocking");
            (t, i >= SILENT_TCP, None)
        })
        .collect();
    let opened = began.elapsed();

    // The well-behaved RA, queued behind all of them.
    let good = std::thread::scope(|s| {
        let good = s.spawn(|| issue_one(&d, &csr, "good-during-attack"));
        let mut max_held = 0;
        let mut tick = 0usize;
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            max_held = max_held.max(established(pid, port));
            let second = tick.is_multiple_of(10);
            for (t, start, closed) in loris.iter_mut().filter(|l| l.2.is_none()) {
                let sent = (tick / 10 + 1).min(head.len() - 1);
                let wrote = !second || t.write_all(&head[sent..=sent]).is_ok();
                if !wrote || tls_closed(t) {
                    *closed = Some(start.elapsed());
                }
            }
            for (t, trickle, closed) in idle.iter_mut().filter(|c| c.2.is_none()) {
                let wrote = !(second && *trickle) || t.write(&[0x16]).is_ok();
                if !wrote || tcp_closed(t) {
                    *closed = Some(began.elapsed());
                }
            }
            if good.is_finished()
                && loris.iter().all(|l| l.2.is_some())
                && idle.iter().all(|c| c.2.is_some())
            {
                break;
            }
            tick += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let good = good.join().expect("good client thread");
        (good, max_held)
    });
    let (good, max_held) = good;
    let loris_open = loris.iter().filter(|l| l.2.is_none()).count();
    let idle_open = idle.iter().filter(|c| c.2.is_none()).count();
    let loris_max = loris.iter().filter_map(|l| l.2).max().unwrap_or_default();
    let idle_max = idle.iter().filter_map(|c| c.2).max().unwrap_or_default();
    drop(loris);
    drop(idle);
    let after = issue_one(&d, &csr, "good-after-attack");
    println!(
        "fault_limits: {} connections opened in {opened:?} ({SILENT_TCP} silent TCP, {TRICKLING_TLS} \
         trickling TLS bytes, {SLOW_LORIS} slow-loris), at most {max_held} held by certd \
         (max_connections {MAX_CONNECTIONS}); slow-loris dropped after at most {loris_max:?} \
         (header timeout {HEADER_TIMEOUT:?}), idle ones all gone after {idle_max:?}; \
         good client during the attack: {good:?}, after: {after:?}",
        SILENT_TCP + TRICKLING_TLS + SLOW_LORIS
    );
    // The attack did reach certd (the count is read from /proc), and no
    // further than max_connections.
    assert!(
        max_held >= MAX_CONNECTIONS / 2,
        "certd held only {max_held} connections during an attack of {}: the count from /proc is off",
        SILENT_TCP + TRICKLING_TLS + SLOW_LORIS
    );
    assert!(
        max_held <= MAX_CONNECTIONS,
        "certd held {max_held} connections, over max_connections = {MAX_CONNECTIONS}"
    );
    assert_eq!(
        loris_open, 0,
        "slow-loris connections still open after 40 s"
    );
    assert_eq!(idle_open, 0, "idle connections still open after 40 s");
    assert!(
        loris_max <= HEADER_TIMEOUT + SLACK,
        "a slow-loris connection was held {loris_max:?} (header timeout {HEADER_TIMEOUT:?})"
    );
    let good = good.expect("the good client issues during the attack");
    assert!(
        good < Duration::from_secs(15),
        "the good client waited {good:?} during the attack"
    );
    let after = after.expect("the good client issues after the attack");
    assert!(after < Duration::from_secs(2), "issuance took {after:?}");
}

#[test]
fn authenticated_silent_connections_do_not_hold_every_slot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca(tmp.path());
    let key = make_key(tmp.path(), "good", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "good", &key, "/CN=good.example.com", &[]).pem;
    let cred = d.ca.ra("ra-main").clone();
    // A stolen RA credential fills every slot with connections that finish
    // the handshake and then send nothing.
    let mut silent: Vec<(Tls, Option<Duration>)> = (0..MAX_CONNECTIONS)
        .map(|_| (tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred), None))
        .collect();
    let began = Instant::now();
    let limit = IDLE_TIMEOUT.max(HEADER_TIMEOUT) + SLACK;
    while began.elapsed() < limit && silent.iter().any(|s| s.1.is_none()) {
        for (t, closed) in silent.iter_mut().filter(|s| s.1.is_none()) {
            if tls_closed(t) {
                *closed = Some(began.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_open = silent.iter().filter(|s| s.1.is_none()).count();
    // certd's client timeout is 30 s; ask with a shorter patience.
    let client = certd_api::CertdClient::new(&certd_api::ClientConfig {
        url: d.ca.url(),
        client_cert: cred.cert.clone(),
        client_key: cred.key.clone(),
        server_ca: d.ca.tls.ca_cert.clone(),
        timeout: Duration::from_secs(5),
    })
    .expect("client");
    let health = d.block_on(client.health());
    println!(
        "fault_limits: {MAX_CONNECTIONS} authenticated silent connections: {still_open} still open \
         after {limit:?} (idle_timeout {IDLE_TIMEOUT:?}, header_timeout {HEADER_TIMEOUT:?}); \
         another client meanwhile: {}",
        match &health {
            Ok(h) => format!("served ({})", h.status),
            Err(e) => format!("not served: {e}"),
        }
    );
    drop(silent);
    assert_eq!(
        still_open, 0,
        "{still_open} of {MAX_CONNECTIONS} authenticated connections that sent nothing are still \
         held after {limit:?}: certd does not enforce idle_timeout_secs (nor header_timeout_secs \
         before the first byte: hyper-util's HTTP version detection waits without a timer), so \
         one RA credential can take every max_connections slot"
    );
    assert!(
        health.is_ok(),
        "with every slot held by silent connections, a well-behaved RA is not served: {health:?}"
    );
    assert!(issue_one(&d, &csr, "after-silent").is_ok());
}

#[test]
fn a_request_body_sent_slowly_is_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca(tmp.path());
    let cred = d.ca.ra("ra-main").clone();
    let mut t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
    t.write_all(
        b"POST /v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 4000\r\n\r\n{",
    )
    .expect("headers");
    let began = Instant::now();
    let limit = REQUEST_TIMEOUT + SLACK;
    let mut closed = None;
    let mut sent = 1;
    let mut answer = Vec::new();
    // The body trickles in at 2 bytes/s until just before the timeout (each
    // byte must not restart it); then the client only listens, so that a
    // write of its own cannot meet the closed connection (a reset would
    // discard the answer before it is read).
    let quiet_from = REQUEST_TIMEOUT - Duration::from_millis(500);
    while began.elapsed() < limit {
        if tls_drain(&mut t, &mut answer) {
            closed = Some(began.elapsed());
            break;
        }
        if began.elapsed() < quiet_from {
            t.write_all(b" ").expect("a body byte before the timeout");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        if began.elapsed() < quiet_from {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    println!(
        "fault_limits: slow body ({sent} of 4000 bytes, 2 per second): {}",
        match closed {
            Some(c) => format!("cut off after {c:?}"),
            None => format!("still open after {limit:?}"),
        }
    );
    assert!(
        closed.is_some(),
        "a request whose body arrives at 2 bytes/s is still being read after {limit:?}: \
         certd does not enforce request_timeout_secs ({REQUEST_TIMEOUT:?}); the body read in \
         server::read_json has no deadline"
    );
    // Cut at the timeout, not before, and told why.
    let closed = closed.unwrap_or_default();
    assert!(
        closed + Duration::from_millis(250) >= REQUEST_TIMEOUT,
        "cut off after {closed:?}, before request_timeout {REQUEST_TIMEOUT:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("\"request_timeout\""),
        "the answer to a body sent too slowly: {answer:?}"
    );
}

/// What certd answers on `t` to a request ending in `Connection: close`:
/// the status code and the body.
fn answer_of(t: &mut Tls) -> (u16, String) {
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tls_drain(t, &mut raw) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

#[test]
fn a_body_over_max_body_bytes_is_refused_with_or_without_content_length() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca(tmp.path());
    let cred = d.ca.ra("ra-main").clone();
    let head = |extra: &str| {
        format!(
            "POST /v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Connection: close\r\n{extra}\r\n"
        )
    };
    // A JSON string as long as asked for: a body certd must read whole to
    // know it is not a request.
    let body_of = |len: usize| format!("\"{}\"", "a".repeat(len - 2));
    let limit = 8192;
    let mut outcomes = Vec::new();

    // Exactly the limit: read, then refused for what it is, not its size.
    let mut t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
    let body = body_of(limit);
    t.write_all(format!("{}{body}", head(&format!("Content-Length: {limit}\r\n"))).as_bytes())
        .expect("request");
    let (status, text) = answer_of(&mut t);
    outcomes.push(format!("{limit} bytes: {status}"));
    assert_eq!(status, 400, "a body of exactly max_body_bytes: {text}");
    assert!(text.contains("\"bad_request\""), "{text}");

    // One byte over, announced: refused before the body is read.
    let mut t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
    let announced = head(&format!("Content-Length: {}\r\n", limit + 1));
    t.write_all(announced.as_bytes()).expect("headers");
    // The body may be refused before it is sent; certd may close first.
    let _ = t.write_all(body_of(limit + 1).as_bytes());
    let (status, text) = answer_of(&mut t);
    outcomes.push(format!("{} bytes, Content-Length: {status}", limit + 1));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"body_too_large\""), "{text}");

    // Chunked, no Content-Length, growing past the limit: cut at the limit.
    let mut t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
    t.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .expect("headers");
    let chunk = "a".repeat(1000);
    let mut sent = 0;
    while sent <= 4 * limit {
        if t.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = t.write_all(b"0\r\n\r\n");
    let (status, text) = answer_of(&mut t);
    outcomes.push(format!("chunked, {sent} bytes sent: {status}"));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"body_too_large\""), "{text}");

    // The daemon goes on serving.
    let key = make_key(tmp.path(), "good", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "good", &key, "/CN=good.example.com", &[]).pem;
    let served = issue_one(&d, &csr, "after-large-bodies");
    println!("fault_limits: max_body_bytes {limit}: {outcomes:?}; then a request: {served:?}");
    assert!(served.is_ok(), "{served:?}");
}

#[test]
fn a_silent_or_trickling_client_is_cut_at_the_handshake_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca(tmp.path());
    let mut cut = Vec::new();
    for trickle in [false, true] {
        let mut t = TcpStream::connect(("127.0.0.1", d.ca.port)).expect("connect");
        t.set_nonblocking(true).expect("non-blocking");
        let began = Instant::now();
        let mut closed = None;
        // A well-formed TLS record header announcing a 512-byte
        // handshake record, whose body then comes one byte every 200 ms
        // (a malformed one would be refused at once, not timed out).
        if trickle {
            t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                .expect("record header");
        }
        while began.elapsed() < IDLE_TIMEOUT + SLACK {
            if trickle && t.write(&[0x01]).is_err() || tcp_closed(&mut t) {
                closed = Some(began.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let closed = closed.unwrap_or_else(|| {
            panic!("an unauthenticated connection (trickle: {trickle}) is still open")
        });
        cut.push(closed);
        // The handshake timeout, not the later header or idle timeouts.
        assert!(
            closed + Duration::from_millis(250) >= HANDSHAKE_TIMEOUT
                && closed < HANDSHAKE_TIMEOUT + Duration::from_millis(1500),
            "connection (trickle: {trickle}) cut after {closed:?}; handshake timeout {HANDSHAKE_TIMEOUT:?}"
        );
    }
    println!(
        "fault_limits: silent and trickling unauthenticated connections cut after {cut:?} \
         (handshake timeout {HANDSHAKE_TIMEOUT:?})"
    );
}
