//! systemd notification (`sd_notify`): READY=1, WATCHDOG=1, STOPPING=1 over `$NOTIFY_SOCKET`.
//!
//! The health thread pings the watchdog only while every stage thread has made progress
//! recently, so a wedged pipeline gets restarted by systemd.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

/// The address a `NOTIFY_SOCKET` value names (`@name` is an abstract socket).
pub fn socket_addr(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(value)
    }
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`; `None` when not run by systemd with `Type=notify`.
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().to_string();
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros);
        Self::new(&path, watchdog).map(Some)
    }

    /// Talk to the socket named `path`; `watchdog` is the interval systemd expects pings within.
    pub fn new(path: &str, watchdog: Option<Duration>) -> io::Result<Self> {
        let addr = socket_addr(path)?;
        let sock = UnixDatagram::unbound()?;
        // Bounded wait: a busy service manager may queue us briefly, never for long.
        sock.set_write_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self {
            sock,
            addr,
            watchdog,
        })
    }

    /// The watchdog interval, if systemd set one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one state string (e.g. `READY=1`); waits at most 100 ms.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }

    /// The line is up.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// Everything is alive.
    pub fn ping(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// Shutting down.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_socket_receives() {
        let name = format!("diffad-test-{}", std::process::id());
        let addr = socket_addr(&format!("@{name}")).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}"), None).unwrap();
        n.ping().unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
