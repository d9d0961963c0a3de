//! Resource limits under hostile connections, all on 127.0.0.1, bounded in
//! count: `api.max_connections`, `handshake_timeout_secs`,
//! `header_timeout_secs`, `request_timeout_secs` and `idle_timeout_secs`.
//!
//! - Hundreds of idle and slow connections (silent TCP, TLS bytes trickled,
//!   and slow-loris: authenticated TLS, then request headers one byte per
//!   second) never hold more than `max_connections` sockets in certd, are all
//!   dropped by their timeouts, and a well-behaved RA still gets its
//!   certificate.
//! - An authenticated connection that sends nothing, or sends its body
//!   slowly, is dropped by `idle_timeout_secs` / `request_timeout_secs`,
//!   so a stolen RA credential cannot hold every slot.
//! - A body over `max_body_bytes` is refused with 413 `body_too_large`,
//!   announced or chunked; one of exactly that size is read.
//! - A client that never completes its TLS handshake is cut at
//!   `handshake_timeout_secs`.
//!
//! No test bounds how fast anything happens. Which timeout cut a connection
//! is read from what certd records about that connection (its client port):
//! the `tls_refused` audit entry or the "TLS handshake refused" log line
//! with reason "handshake timed out", the debug log lines of the header
//! and idle timeouts, the 408 `request_timeout` answer and its audit entry.
//! Each daemon sets short only the timeouts its test is about, and every
//! other one far beyond [`HANG`], so nothing else can cut a connection
//! however loaded the machine is. A connection is never cut before its
//! timeout (lower bounds). Waits are bounded by [`HANG`], which only
//! catches hangs.
#![forbid(unsafe_code)]

use certd_e2e::api::{
    make_csr, make_key, tls_client_config, ApiCaBuilder, ApiDaemon, KeyAlg, RaCredential,
};
use certd_e2e::poll_until;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Every timeout a test is not about: far beyond [`HANG`], so it cannot
/// fire during a test (nor cut a handshake or a request slowed by load).
const UNTESTED: Duration = Duration::from_secs(3600);
/// An upper bound on every wait: it only catches hangs.
const HANG: Duration = Duration::from_secs(120);
/// Tolerance of the lower bounds: the client's clock starts a little after
/// certd's may (a write returns after the byte left).
const EARLY: Duration = Duration::from_millis(250);

const SILENT_TCP: usize = 150;
const TRICKLING_TLS: usize = 50;
const SLOW_LORIS: usize = 50;

/// How certd's log (`CERTD_LOG` below) tells that a timeout closed a
/// connection: a line with `event` that names the client
/// (`peer=127.0.0.1:PORT`), and says `reason`.
#[derive(Debug)]
struct Cut {
    event: &'static str,
    reason: &'static str,
}

const HANDSHAKE_CUT: Cut = Cut {
    event: "TLS handshake refused",
    reason: "reason=\"handshake timed out\"",
};
const HEADER_CUT: Cut = Cut {
    event: "connection ended with an error",
    reason: "read header from client timeout",
};
const IDLE_CUT: Cut = Cut {
    event: "closing an idle connection",
    reason: "",
};

/// The API timeouts of one daemon.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    handshake: Duration,
    header: Duration,
    request: Duration,
    idle: Duration,
}

impl Timeouts {
    /// None that can fire during a test; a test shortens the ones it is
    /// about.
    const UNTESTED: Timeouts = Timeouts {
        handshake: UNTESTED,
        header: UNTESTED,
        request: UNTESTED,
        idle: UNTESTED,
    };
}

fn ca(dir: &Path, t: Timeouts) -> ApiDaemon {
    ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml("[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n")
        .api(&format!(
            "max_connections = {MAX_CONNECTIONS}\nhandshake_timeout_secs = {}\n\
             header_timeout_secs = {}\nrequest_timeout_secs = {}\nidle_timeout_secs = {}\n\
             max_body_bytes = 8192",
            t.handshake.as_secs(),
            t.header.as_secs(),
            t.request.as_secs(),
            t.idle.as_secs()
        ))
        .ra(
            "ra-main",
            "certifiers = [\"ca\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]",
        )
        .build()
        // The connection's debug lines say which timeout closed it.
        .start_with_env(&[("CERTD_LOG", OsStr::new("info,certd::server=debug"))])
}

/// The lines of certd's log with `event`, by the client port they name
/// (`peer=127.0.0.1:PORT`).
fn logged(d: &ApiDaemon, event: &str) -> HashMap<u16, Vec<String>> {
    let log = std::fs::read_to_string(&d.ca.config.log).unwrap_or_default();
    let mut by_port: HashMap<u16, Vec<String>> = HashMap::new();
    for line in log.lines().filter(|l| l.contains(event)) {
        let Some((_, rest)) = line.split_once("peer=127.0.0.1:") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(port) = digits.parse() {
            by_port.entry(port).or_default().push(line.to_string());
        }
    }
    by_port
}

/// The connections of `ports` that `cut` did not close. Waits until
/// certd's log has its `cut.event` line for each (written as certd closes
/// the connection, or just after: the handshake's after the socket is
/// dropped), bounded by [`HANG`]; then a port without it, or whose line
/// gives another reason, is returned with what the log says of it.
fn not_cut_by(d: &ApiDaemon, cut: &Cut, ports: &[u16]) -> Vec<String> {
    let deadline = Instant::now() + HANG;
    let lines = loop {
        let lines = logged(d, cut.event);
        if ports.iter().all(|p| lines.contains_key(p)) || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ports
        .iter()
        .filter_map(|p| match lines.get(p) {
            None => Some(format!("{p}: no {:?} line", cut.event)),
            Some(l) if l.iter().any(|l| l.contains(cut.reason)) => None,
            Some(l) => Some(format!("{p}: {l:?}")),
        })
        .collect()
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with `cred` (the RAs' rustls configuration),
/// speaking HTTP/1.1.
fn tls_connect(port: u16, server_ca: &Path, cred: &RaCredential) -> Tls {
    let config = tls_client_config(server_ca, cred, &[b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let mut conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(HANG)).expect("read timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    Tls::new(conn, tcp)
}

/// The client port of a connection.
fn port_of(tcp: &TcpStream) -> u16 {
    tcp.local_addr().expect("a connected socket").port()
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

/// A client of `ra-main` whose patience only catches hangs.
fn patient_client(d: &ApiDaemon) -> certd_api::CertdClient {
    let cred = d.ca.ra("ra-main");
    certd_api::CertdClient::new(&certd_api::ClientConfig {
        url: d.ca.url(),
        client_cert: cred.cert.clone(),
        client_key: cred.key.clone(),
        server_ca: d.ca.tls.ca_cert.clone(),
        timeout: HANG,
    })
    .expect("client")
}

/// Issues one certificate as `ra-main`; returns how long it took (for
/// the report only).
fn issue_one(d: &ApiDaemon, csr: &str, id: &str) -> Result<Duration, String> {
    let client = patient_client(d);
    let req = certd_api::IssueRequest::new(id, "tls-server", csr);
    let began = Instant::now();
    d.block_on(client.issue(&req))
        .map(|_| began.elapsed())
        .map_err(|e| e.to_string())
}

/// A TLS record header announcing a 512-byte handshake record, trickled
/// one byte at a time and then followed by body bytes that never complete
/// it: well-formed, so certd waits for the rest rather than refusing it.
const RECORD_HEADER: [u8; 5] = [0x16, 0x03, 0x01, 0x02, 0x00];

/// One connection of an attack: the stream, its client port, when it was
/// opened (for slow-loris: when its first header byte was sent), how many
/// bytes it has trickled, and after how long certd closed it.
struct Attacker<S> {
    stream: S,
    port: u16,
    since: Instant,
    sent: usize,
    closed: Option<Duration>,
}

#[test]
fn idle_and_slow_connections_are_dropped_and_a_good_client_is_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Unauthenticated connections are cut by the handshake timeout,
    // slow-loris by the header timeout; nothing else can fire.
    let d = ca(
        tmp.path(),
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            header: HEADER_TIMEOUT,
            ..Timeouts::UNTESTED
        },
    );
    let (port, pid) = (d.ca.port, d.instance.pid());
    let key = make_key(tmp.path(), "good", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "good", &key, "/CN=good.example.com", &[]).pem;
    let cred = d.ca.ra("ra-main").clone();
    let head = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n";
    let began = Instant::now();

    // Slow-loris: authenticated, then headers one byte per second.
    let mut loris: Vec<Attacker<Tls>> = (0..SLOW_LORIS)
        .map(|_| {
            let mut t = tls_connect(port, &d.ca.tls.ca_cert, &cred);
            t.write_all(&head[..1]).expect("first header byte");
            let port = port_of(&t.sock);
            Attacker {
                stream: t,
                port,
                since: Instant::now(),
                sent: 1,
                closed: None,
            }
        })
        .collect();
    // Silent TCP connections and ones trickling a TLS record.
    let mut idle: Vec<(Attacker<TcpStream>, bool)> = (0..SILENT_TCP + TRICKLING_TLS)
        .map(|i| {
            let t = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            t.set_nonblocking(true).expect("non-blocking");
            let port = port_of(&t);
            let a = Attacker {
                stream: t,
                port,
                since: Instant::now(),
                sent: 0,
                closed: None,
            };
            (a, i >= SILENT_TCP)
        })
        .collect();
    let opened = began.elapsed();

    // The well-behaved RA, queued behind all of them.
    let good = std::thread::scope(|s| {
        let good = s.spawn(|| issue_one(&d, &csr, "good-during-attack"));
        let mut max_held = 0;
        let mut tick = 0usize;
        let deadline = Instant::now() + HANG;
        while Instant::now() < deadline {
            max_held = max_held.max(established(pid, port));
            // The attackers' pace: a byte a second.
            let second = tick.is_multiple_of(10);
            for a in loris.iter_mut().filter(|a| a.closed.is_none()) {
                let wrote = !second || {
                    let i = a.sent.min(head.len() - 2);
                    a.sent += 1;
                    a.stream.write_all(&head[i..=i]).is_ok()
                };
                if !wrote || tls_closed(&mut a.stream) {
                    a.closed = Some(a.since.elapsed());
                }
            }
            for (a, trickle) in idle.iter_mut().filter(|c| c.0.closed.is_none()) {
                let wrote = !(second && *trickle) || {
                    let byte = RECORD_HEADER.get(a.sent).copied().unwrap_or(0x01);
                    a.sent += 1;
                    a.stream.write(&[byte]).is_ok()
                };
                if !wrote || tcp_closed(&mut a.stream) {
                    a.closed = Some(a.since.elapsed());
                }
            }
            if good.is_finished()
                && loris.iter().all(|a| a.closed.is_some())
                && idle.iter().all(|c| c.0.closed.is_some())
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
    let loris_open = loris.iter().filter(|a| a.closed.is_none()).count();
    let idle_open = idle.iter().filter(|c| c.0.closed.is_none()).count();
    // Which timeout closed each: certd's log, by client port.
    let loris_ports: Vec<u16> = loris.iter().map(|a| a.port).collect();
    let idle_ports: Vec<u16> = idle.iter().map(|c| c.0.port).collect();
    let loris_not_header = not_cut_by(&d, &HEADER_CUT, &loris_ports);
    let idle_not_handshake = not_cut_by(&d, &HANDSHAKE_CUT, &idle_ports);
    // Not before their timeouts.
    let loris_early: Vec<Duration> = loris
        .iter()
        .filter_map(|a| a.closed)
        .filter(|c| *c + EARLY < HEADER_TIMEOUT)
        .collect();
    let idle_early: Vec<Duration> = idle
        .iter()
        .filter_map(|c| c.0.closed)
        .filter(|c| *c + EARLY < HANDSHAKE_TIMEOUT)
        .collect();
    let range = |it: &mut dyn Iterator<Item = Duration>| {
        let all: Vec<Duration> = it.collect();
        (
            all.iter().min().copied().unwrap_or_default(),
            all.iter().max().copied().unwrap_or_default(),
        )
    };
    let loris_range = range(&mut loris.iter().filter_map(|a| a.closed));
    let idle_range = range(&mut idle.iter().filter_map(|c| c.0.closed));
    drop(loris);
    drop(idle);
    let after = issue_one(&d, &csr, "good-after-attack");
    println!(
        "fault_limits: {} connections opened in {opened:?} ({SILENT_TCP} silent TCP, {TRICKLING_TLS} \
         trickling TLS bytes, {SLOW_LORIS} slow-loris), at most {max_held} held by certd \
         (max_connections {MAX_CONNECTIONS}); slow-loris: {} of {SLOW_LORIS} cut by the header \
         timeout ({HEADER_TIMEOUT:?}), {:?}..{:?} after their first byte; silent and trickling: \
         {} of {} cut by the handshake timeout ({HANDSHAKE_TIMEOUT:?}), {:?}..{:?} after connecting; \
         good client during the attack: {good:?}, after: {after:?}",
        SILENT_TCP + TRICKLING_TLS + SLOW_LORIS,
        SLOW_LORIS - loris_not_header.len(),
        loris_range.0,
        loris_range.1,
        idle_ports.len() - idle_not_handshake.len(),
        idle_ports.len(),
        idle_range.0,
        idle_range.1,
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
        "slow-loris connections still open after {HANG:?}"
    );
    assert_eq!(idle_open, 0, "idle connections still open after {HANG:?}");
    assert!(
        loris_not_header.is_empty(),
        "slow-loris connections not closed by the header timeout ({HEADER_CUT:?}), by client \
         port: {loris_not_header:#?}\n{}",
        d.log()
    );
    assert!(
        idle_not_handshake.is_empty(),
        "silent or trickling connections not closed by the handshake timeout \
         ({HANDSHAKE_CUT:?}), by client port: {idle_not_handshake:#?}\n{}",
        d.log()
    );
    assert!(
        loris_early.is_empty(),
        "slow-loris connections closed before the header timeout {HEADER_TIMEOUT:?}: {loris_early:?}"
    );
    assert!(
        idle_early.is_empty(),
        "connections closed before the handshake timeout {HANDSHAKE_TIMEOUT:?}: {idle_early:?}"
    );
    good.expect("the good client issues during the attack");
    after.expect("the good client issues after the attack");
}

#[test]
fn authenticated_silent_connections_do_not_hold_every_slot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Only the idle timeout can fire.
    let d = ca(
        tmp.path(),
        Timeouts {
            idle: IDLE_TIMEOUT,
            ..Timeouts::UNTESTED
        },
    );
    let key = make_key(tmp.path(), "good", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "good", &key, "/CN=good.example.com", &[]).pem;
    let cred = d.ca.ra("ra-main").clone();
    // A stolen RA credential fills every slot with connections that finish
    // the handshake and then send nothing.
    let mut silent: Vec<Attacker<Tls>> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
            let port = port_of(&t.sock);
            Attacker {
                stream: t,
                port,
                since: Instant::now(),
                sent: 0,
                closed: None,
            }
        })
        .collect();
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline && silent.iter().any(|a| a.closed.is_none()) {
        for a in silent.iter_mut().filter(|a| a.closed.is_none()) {
            if tls_closed(&mut a.stream) {
                a.closed = Some(a.since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_open = silent.iter().filter(|a| a.closed.is_none()).count();
    let ports: Vec<u16> = silent.iter().map(|a| a.port).collect();
    let not_idle = not_cut_by(&d, &IDLE_CUT, &ports);
    let early: Vec<Duration> = silent
        .iter()
        .filter_map(|a| a.closed)
        .filter(|c| *c + EARLY < IDLE_TIMEOUT)
        .collect();
    let closed: Vec<Duration> = silent.iter().filter_map(|a| a.closed).collect();
    let health = d.block_on(patient_client(&d).health());
    println!(
        "fault_limits: {MAX_CONNECTIONS} authenticated silent connections: {still_open} still open \
         after {HANG:?}, {} closed by the idle timeout ({IDLE_TIMEOUT:?}), {:?}..{:?} after their \
         handshake; another client then: {}",
        ports.len() - not_idle.len(),
        closed.iter().min().copied().unwrap_or_default(),
        closed.iter().max().copied().unwrap_or_default(),
        match &health {
            Ok(h) => format!("served ({})", h.status),
            Err(e) => format!("not served: {e}"),
        }
    );
    drop(silent);
    assert_eq!(
        still_open, 0,
        "{still_open} of {MAX_CONNECTIONS} authenticated connections that sent nothing are still \
         held after {HANG:?}: certd does not enforce idle_timeout_secs (the header timeout does \
         not start before the first byte: hyper-util's HTTP version detection waits without a \
         timer), so one RA credential can take every max_connections slot"
    );
    assert!(
        not_idle.is_empty(),
        "silent authenticated connections not closed by the idle timeout ({IDLE_CUT:?}), by \
         client port: {not_idle:#?}\n{}",
        d.log()
    );
    assert!(
        early.is_empty(),
        "silent connections closed before the idle timeout {IDLE_TIMEOUT:?}: {early:?}"
    );
    assert!(
        health.is_ok(),
        "once the silent connections are dropped, a well-behaved RA is not served: {health:?}"
    );
    assert!(issue_one(&d, &csr, "after-silent").is_ok());
}

#[test]
fn a_request_body_sent_slowly_is_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Only the request timeout can fire.
    let d = ca(
        tmp.path(),
        Timeouts {
            request: REQUEST_TIMEOUT,
            ..Timeouts::UNTESTED
        },
    );
    let cred = d.ca.ra("ra-main").clone();
    let mut t = tls_connect(d.ca.port, &d.ca.tls.ca_cert, &cred);
    t.write_all(
        b"POST /v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 4000\r\n\r\n{",
    )
    .expect("headers");
    let began = Instant::now();
    let mut closed = None;
    let mut sent = 1;
    let mut answer = Vec::new();
    // The body trickles in at 2 bytes/s until just before the timeout (each
    // byte must not restart it); then the client only listens, so that a
    // write of its own cannot meet the closed connection (a reset would
    // discard the answer before it is read).
    let quiet_from = REQUEST_TIMEOUT - Duration::from_millis(500);
    while began.elapsed() < HANG {
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
    // What certd recorded: the refusal, under the RA's name.
    let audited = d.audit_of("refused").into_iter().find(|e| {
        e["actor"] == "ra-main"
            && e["detail"]["path"] == "/v1/certificates"
            && e["detail"]["code"] == "request_timeout"
    });
    println!(
        "fault_limits: slow body ({sent} of 4000 bytes, 2 per second): {}; audited: {}",
        match closed {
            Some(c) => format!("cut off after {c:?}"),
            None => format!("still open after {HANG:?}"),
        },
        audited.is_some()
    );
    assert!(
        closed.is_some(),
        "a request whose body arrives at 2 bytes/s is still being read after {HANG:?}: \
         certd does not enforce request_timeout_secs ({REQUEST_TIMEOUT:?}); the body read in \
         server::read_json has no deadline"
    );
    // Cut at the timeout, not before, and told why: the request timeout,
    // the only one that can fire here.
    let closed = closed.unwrap_or_default();
    assert!(
        closed + EARLY >= REQUEST_TIMEOUT,
        "cut off after {closed:?}, before request_timeout {REQUEST_TIMEOUT:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("\"request_timeout\""),
        "the answer to a body sent too slowly: {answer:?}"
    );
    assert!(
        audited.is_some(),
        "no `refused` audit entry with code request_timeout for ra-main: {:#?}",
        d.audit_of("refused")
    );
}

/// What certd answers on `t` to a request ending in `Connection: close`:
/// the status code and the body.
fn answer_of(t: &mut Tls) -> (u16, String) {
    let mut raw = Vec::new();
    let deadline = Instant::now() + HANG;
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
    let d = ca(tmp.path(), Timeouts::UNTESTED);
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
    // Only the handshake timeout can fire.
    let d = ca(
        tmp.path(),
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            ..Timeouts::UNTESTED
        },
    );
    let mut cut = Vec::new();
    // Kept open to the end, so the second connection cannot get the first
    // one's client port.
    let mut held = Vec::new();
    for trickle in [false, true] {
        let mut t = TcpStream::connect(("127.0.0.1", d.ca.port)).expect("connect");
        t.set_nonblocking(true).expect("non-blocking");
        let peer = format!("peer:127.0.0.1:{}", port_of(&t));
        let began = Instant::now();
        let mut closed = None;
        // A well-formed TLS record header announcing a 512-byte
        // handshake record, whose body then comes one byte every 200 ms
        // (a malformed one would be refused at once, not timed out).
        if trickle {
            t.write_all(&RECORD_HEADER).expect("record header");
        }
        while began.elapsed() < HANG {
            if trickle && t.write(&[0x01]).is_err() || tcp_closed(&mut t) {
                closed = Some(began.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "an unauthenticated connection (trickle: {trickle}) is still open after {HANG:?}"
            )
        });
        // The handshake timeout cut it: certd audits the refusal of this
        // very connection (its client port), just after dropping it.
        let refused: Vec<serde_json::Value> = poll_until(
            HANG,
            &format!("the tls_refused audit entry of {peer}"),
            || {
                let of_peer: Vec<serde_json::Value> = d
                    .audit_of("tls_refused")
                    .into_iter()
                    .filter(|e| e["actor"] == peer.as_str())
                    .collect();
                (!of_peer.is_empty()).then_some(of_peer)
            },
            || d.log(),
        );
        let reasons: Vec<&str> = refused
            .iter()
            .filter_map(|e| e["detail"]["reason"].as_str())
            .collect();
        cut.push(format!("{peer} cut after {closed:?}, audited: {reasons:?}"));
        assert!(
            reasons.contains(&"handshake timed out"),
            "connection (trickle: {trickle}) cut after {closed:?}, but certd did not audit a \
             handshake timeout for {peer}: {refused:?}\n{}",
            d.log()
        );
        // Not before the timeout.
        assert!(
            closed + EARLY >= HANDSHAKE_TIMEOUT,
            "connection (trickle: {trickle}) cut after {closed:?}, before the handshake timeout \
             {HANDSHAKE_TIMEOUT:?}"
        );
        held.push(t);
    }
    println!(
        "fault_limits: silent and trickling unauthenticated connections (handshake timeout \
         {HANDSHAKE_TIMEOUT:?}): {cut:?}"
    );
}
