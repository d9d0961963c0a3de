//! Waiting for a daemon the way systemd does: its `READY=1` notification on
//! a `NOTIFY_SOCKET` the test binds, and sockets the test binds and hands
//! over (`LISTEN_FDS`), so no test ever races another process for a port.

use crate::process::ChildGuard;
use command_fds::{CommandFdExt, FdMapping};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upper bound on start-up that only catches a hang: a daemon that is
/// merely slow on a loaded machine still passes.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// A `NOTIFY_SOCKET` bound by the test: what the daemon tells systemd, it
/// tells the test.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// How a wait for a notification ended.
#[derive(Debug)]
pub enum Notified {
    /// The notification came, after this long.
    Sent(Duration),
    /// The process exited first.
    Exited(ExitStatus),
}

impl NotifySocket {
    /// Binds a fresh socket at `path` (replacing a stale one).
    pub fn bind(path: &Path) -> NotifySocket {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("cannot bind a notify socket at {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout on a datagram socket");
        NotifySocket {
            socket,
            path: path.to_path_buf(),
        }
    }

    /// Its path: the daemon's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The messages that arrived and were not read yet, without waiting.
    pub fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let _ = self.socket.set_nonblocking(true);
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let _ = self.socket.set_nonblocking(false);
        out
    }

    /// Waits for a message with the line `line` (`READY=1`, `STOPPING=1`)
    /// from `child`, or for `child` to exit. Every message received on the
    /// way is appended to `seen`. Panics with `context()` after `limit`,
    /// which only catches hangs.
    pub fn wait_for(
        &self,
        line: &str,
        child: &mut ChildGuard,
        limit: Duration,
        seen: &mut Vec<String>,
        context: impl FnOnce() -> String,
    ) -> Notified {
        self.wait_until(
            line,
            |m| m.lines().any(|l| l == line),
            child,
            limit,
            seen,
            context,
        )
    }

    /// Waits for a message that satisfies `want` (described by `what`)
    /// from `child`, or for `child` to exit; see [`NotifySocket::wait_for`].
    pub fn wait_until(
        &self,
        what: &str,
        want: impl Fn(&str) -> bool,
        child: &mut ChildGuard,
        limit: Duration,
        seen: &mut Vec<String>,
        context: impl FnOnce() -> String,
    ) -> Notified {
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let found = want(&msg);
                    seen.push(msg);
                    if found {
                        return Notified::Sent(start.elapsed());
                    }
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading {}: {e}", self.path.display()),
            }
            if let Some(status) = child.try_wait() {
                // A message sent just before exiting is still queued.
                for msg in self.drain() {
                    let found = want(&msg);
                    seen.push(msg);
                    if found {
                        return Notified::Sent(start.elapsed());
                    }
                }
                return Notified::Exited(status);
            }
            if start.elapsed() > limit {
                panic!(
                    "no {what} from pid {} within {limit:?} (a hang)\nnotifications: {seen:?}\n{}",
                    child.id(),
                    context()
                );
            }
        }
    }
}

/// A TCP listening socket on 127.0.0.1 that the test binds (port chosen by
/// the kernel) and keeps, handing it to each daemon it starts the way
/// systemd's socket activation does (`LISTEN_FDS=1`, the socket as fd 3).
/// The port is known before the daemon starts and never changes hands, so
/// nothing can race for it; connections made while a daemon restarts wait
/// in the backlog for the next one.
#[derive(Debug, Clone)]
pub struct ApiSocket {
    listener: Arc<TcpListener>,
    port: u16,
}

impl ApiSocket {
    /// Binds a new socket on 127.0.0.1.
    pub fn bind() -> ApiSocket {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listening socket on 127.0.0.1");
        let port = listener
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        ApiSocket {
            listener: Arc::new(listener),
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Makes `cmd` start with `sockets` as fds 3, 4, ... named in
    /// `LISTEN_FDNAMES`, the way systemd passes several sockets.
    pub fn pass_all(cmd: &mut Command, sockets: &[(&ApiSocket, &str)]) {
        let mappings = sockets
            .iter()
            .enumerate()
            .map(|(i, (s, _))| FdMapping {
                parent_fd: s
                    .listener
                    .try_clone()
                    .expect("a duplicate of the listening socket")
                    .into(),
                child_fd: 3 + i as i32,
            })
            .collect();
        cmd.fd_mappings(mappings)
            .expect("the fds are free in the child");
        let names: Vec<&str> = sockets.iter().map(|(_, n)| *n).collect();
        cmd.env("LISTEN_FDS", sockets.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID");
    }

    /// Makes `cmd` start with this socket as fd 3 and `LISTEN_FDS=1`
    /// (without `LISTEN_PID`, which only the forked child could know; the
    /// daemon then takes the socket as its own).
    pub fn pass_to(&self, cmd: &mut Command) {
        let fd = self
            .listener
            .try_clone()
            .expect("a duplicate of the listening socket");
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: fd.into(),
            child_fd: 3,
        }])
        .expect("fd 3 is free in the child");
        cmd.env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "api")
            .env_remove("LISTEN_PID");
    }
}
