//! `[supervisor]`: where the stream listens, who may connect, how much it buffers.

use super::*;

/// `[supervisor]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Listen address of the NDJSON stream; empty string disables it.
    pub listen: String,
    /// Events kept for `resume <run> <seq>`.
    pub buffer: usize,
    /// Events queued per client before it is dropped as stuck.
    pub client_queue: usize,
    /// Clients served at once; one more is refused with a line that says why.
    pub max_clients: usize,
    /// Must be true for `listen` to be an address other machines can reach: the deliberate
    /// choice to put the line's events on the plant network.
    pub expose: bool,
    /// TLS with client certificates: only supervisors whose certificate the CA signed may read.
    pub tls: Option<StreamTls>,
    /// Log records at or above this level go on the stream: error, warn, info, debug, trace, off.
    pub log_level: String,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            buffer: 10_000,
            client_queue: 1024,
            max_clients: 16,
            expose: false,
            tls: None,
            log_level: "warn".into(),
        }
    }
}

impl SupervisorConfig {
    /// Check the address, sizes and level.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() {
            let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
                return Err(Invalid::new(
                    "supervisor.listen",
                    "must be IP:PORT, e.g. \"127.0.0.1:7878\", or \"\"",
                ));
            };
            if !addr.ip().is_loopback() && !self.expose {
                return Err(Invalid::new(
                    "supervisor.expose",
                    format!(
                        "supervisor.listen = \"{}\" can be reached from the network: set supervisor.expose = true \
                         to mean it (and give [supervisor.tls] to say who may read), or listen on 127.0.0.1",
                        self.listen
                    ),
                ));
            }
        }
        if self.buffer == 0 {
            return Err(Invalid::new("supervisor.buffer", "must be > 0"));
        }
        if self.client_queue == 0 {
            return Err(Invalid::new("supervisor.client_queue", "must be > 0"));
        }
        // Each client holds one thread and up to `client_queue` events: bound both.
        if !(1..=1024).contains(&self.max_clients) {
            return Err(Invalid::new(
                "supervisor.max_clients",
                "must be 1..=1024 (each client costs a thread)",
            ));
        }
        self.level()?;
        Ok(())
    }

    /// The parsed `log_level`.
    pub fn level(&self) -> Result<log::LevelFilter, Invalid> {
        self.log_level.parse().map_err(|_| {
            Invalid::new(
                "supervisor.log_level",
                "must be one of off, error, warn, info, debug, trace",
            )
        })
    }
}
