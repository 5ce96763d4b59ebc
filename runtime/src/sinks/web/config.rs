//! `[web]`: where the operator's page listens, who may read it, how much it keeps.

use crate::config::Invalid;
use std::path::PathBuf;

/// `[web]`: the operator's page (off when the section is absent).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// `IP:PORT` of the page, e.g. `"127.0.0.1:8080"`.
    pub listen: String,
    /// Must be true for `listen` to be reachable from other machines (then `[web.tls]` and a
    /// credential are required too).
    pub expose: bool,
    /// File holding the access token (mode 0600); required off loopback unless
    /// `[web.tls] client_ca_file` makes client certificates the credential.
    pub token_file: Option<PathBuf>,
    /// HTTPS for the page.
    pub tls: Option<WebTls>,
    /// Live viewers served at once; one more gets 503 and a message.
    pub max_clients: usize,
    /// Events queued per viewer before it is dropped as stuck.
    pub client_queue: usize,
    /// Events kept so that a viewer that reconnects gets what it missed.
    pub buffer: usize,
    /// Rejected parts shown with their heatmaps.
    pub rejects: usize,
    /// Recent scores kept for the chart.
    pub scores: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            expose: false,
            token_file: None,
            tls: None,
            max_clients: 32,
            client_queue: 2048,
            buffer: 4096,
            rejects: 12,
            scores: 300,
        }
    }
}

/// `[web.tls]`: the page's certificate, and optionally the CA of client certificates.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebTls {
    /// Certificate chain (PEM) naming the address the tablets open.
    pub cert_file: PathBuf,
    /// Its private key (PEM); refused when others may read it.
    pub key_file: PathBuf,
    /// When given, only browsers with a client certificate this CA signed get a page.
    pub client_ca_file: Option<PathBuf>,
}

impl WebConfig {
    /// The parsed listen address.
    pub fn addr(&self) -> Result<std::net::SocketAddr, Invalid> {
        self.listen.parse().map_err(|_| {
            Invalid::new(
                "web.listen",
                format!(
                    "\"{}\" must be IP:PORT, e.g. \"127.0.0.1:8080\"",
                    self.listen
                ),
            )
        })
    }

    /// Check the address against the access rules, and the sizes.
    pub fn validate(&self) -> Result<(), Invalid> {
        let addr = self.addr()?;
        if !addr.ip().is_loopback() {
            if !self.expose {
                return Err(Invalid::new(
                    "web.expose",
                    format!(
                        "web.listen = \"{}\" can be reached from the network: set web.expose = true to mean it \
                         (with [web.tls] and web.token_file), or listen on 127.0.0.1",
                        self.listen
                    ),
                ));
            }
            let Some(tls) = &self.tls else {
                return Err(Invalid::new(
                    "web.tls",
                    format!(
                        "web.listen = \"{}\" is off loopback: the page needs HTTPS there; give [web.tls] \
                         cert_file and key_file",
                        self.listen
                    ),
                ));
            };
            if self.token_file.is_none() && tls.client_ca_file.is_none() {
                return Err(Invalid::new(
                    "web.token_file",
                    "the page off loopback needs a credential: web.token_file (a token in a mode-0600 file) \
                     or web.tls.client_ca_file (client certificates)",
                ));
            }
        }
        let ranges: [(&str, usize, usize, usize); 5] = [
            ("web.max_clients", self.max_clients, 1, 1024),
            ("web.client_queue", self.client_queue, 16, 1 << 20),
            ("web.buffer", self.buffer, 16, 1 << 20),
            ("web.rejects", self.rejects, 1, 100),
            ("web.scores", self.scores, 10, 10_000),
        ];
        crate::config::check_ranges(&ranges)
    }

    /// Files the section names, with the key of each, for the deployment checks.
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path, crate::config::Want)> {
        use crate::config::Want;
        let mut out = Vec::new();
        if let Some(t) = &self.token_file {
            out.push(("web.token_file", t.as_path(), Want::Secret));
        }
        if let Some(t) = &self.tls {
            out.push(("web.tls.cert_file", t.cert_file.as_path(), Want::File));
            out.push(("web.tls.key_file", t.key_file.as_path(), Want::Secret));
            if let Some(ca) = &t.client_ca_file {
                out.push(("web.tls.client_ca_file", ca.as_path(), Want::File));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: bool) -> Option<WebTls> {
        Some(WebTls {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            client_ca_file: ca.then(|| "ca.pem".into()),
        })
    }

    #[test]
    fn loopback_needs_nothing_and_the_network_needs_tls_and_a_credential() {
        WebConfig::default().validate().unwrap();
        let open = WebConfig {
            listen: "0.0.0.0:8080".into(),
            ..Default::default()
        };
        assert_eq!(open.validate().unwrap_err().key, "web.expose");
        let exposed = WebConfig {
            expose: true,
            ..open.clone()
        };
        assert_eq!(exposed.validate().unwrap_err().key, "web.tls");
        let no_credential = WebConfig {
            tls: tls(false),
            ..exposed.clone()
        };
        assert_eq!(no_credential.validate().unwrap_err().key, "web.token_file");
        WebConfig {
            tls: tls(true),
            ..exposed.clone()
        }
        .validate()
        .unwrap();
        WebConfig {
            tls: tls(false),
            token_file: Some("t".into()),
            ..exposed
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn sizes_and_addresses_are_checked_by_key() {
        let bad = WebConfig {
            listen: "localhost".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "web.listen");
        let bad = WebConfig {
            max_clients: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "web.max_clients");
    }
}
