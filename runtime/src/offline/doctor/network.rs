//! The network checks: the supervisor's port and the MQTT broker.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Check;
use crate::sinks::mqtt::MqttConfig;

/// How long the MQTT broker gets to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The supervisor's listen address can be bound now (then it is released).
pub fn check_bind(listen: &str) -> Check {
    if listen.is_empty() {
        return Check::skip("supervisor", "off (supervisor.listen is empty)");
    }
    match TcpListener::bind(listen) {
        Ok(l) => {
            drop(l);
            Check::pass("supervisor", format!("{listen} can be bound"))
        }
        Err(e) => Check::fail(
            "supervisor",
            format!("cannot bind {listen}: {e}"),
            "stop what holds the port (`ss -ltnp`; another diffad?), or change supervisor.listen",
        ),
    }
}

/// The broker accepts a TCP connection within [`CONNECT_TIMEOUT`].
pub fn check_mqtt(cfg: Option<&MqttConfig>) -> Check {
    let Some(cfg) = cfg else {
        return Check::skip("mqtt", "off (no [mqtt])");
    };
    let (_, host, port) = match cfg.endpoint() {
        Ok(e) => e,
        Err(e) => return Check::fail("mqtt", e.to_string(), "fix mqtt.url"),
    };
    let addrs: Vec<_> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Check::fail(
                "mqtt",
                format!("cannot resolve {host}: {e}"),
                "check DNS or /etc/hosts, or use the broker's address in mqtt.url",
            )
        }
    };
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(_) => return Check::pass("mqtt", format!("broker {host}:{port} reachable")),
            Err(e) => last = e.to_string(),
        }
    }
    Check::fail(
        "mqtt",
        format!("broker {host}:{port} unreachable: {last}"),
        "start the broker or open the firewall; events are queued (mqtt.outbox) meanwhile",
    )
}
