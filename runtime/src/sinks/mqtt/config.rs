//! `[mqtt]`: the broker, the topics, credentials and TLS, the outbox.

use super::*;

/// `[mqtt]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (rustls; the broker's CA from `ca_file`,
    /// else the system's roots).
    pub url: String,
    /// Topic prefix: topics are `<prefix>/<line>/{parts,rejects,alarms,heartbeat}`.
    pub prefix: String,
    /// Client id; defaults to `diffad-<line>`.
    pub client_id: Option<String>,
    /// Messages held while the broker is away; what overflows is counted.
    pub outbox: usize,
    /// Wait between reconnect attempts.
    pub reconnect_ms: u64,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the broker's certificate (mqtts://).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "plant".into(),
            client_id: None,
            outbox: 10_000,
            reconnect_ms: 1000,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl MqttConfig {
    /// Split `url` into (tls, host, port).
    pub fn endpoint(&self) -> Result<(bool, String, u16), Invalid> {
        let bad = || Invalid::new("mqtt.url", "must be mqtt://HOST:PORT or mqtts://HOST:PORT");
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok((
            tls,
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        ))
    }

    /// Check URL, sizes and the TLS/credential combination.
    pub fn validate(&self) -> Result<(), Invalid> {
        let (tls, _, _) = self.endpoint()?;
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err(Invalid::new(
                "mqtt.ca_file",
                "TLS files given but the url is not mqtts://",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Invalid::new(
                "mqtt.key_file",
                "cert_file and key_file go together",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Invalid::new(
                "mqtt.password_file",
                "give password or password_file, not both",
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(Invalid::new("mqtt.username", "required with a password"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#']) {
            return Err(Invalid::new(
                "mqtt.prefix",
                "must be non-empty without '+' or '#'",
            ));
        }
        if self.outbox == 0 {
            return Err(Invalid::new("mqtt.outbox", "must be > 0"));
        }
        Ok(())
    }
}
