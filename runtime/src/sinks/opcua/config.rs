//! `[opcua]`: where the OPC UA server listens, which security it offers, who may log in, and
//! how many sessions and subscriptions it takes.

use crate::config::Invalid;
use std::path::PathBuf;

/// A security policy the server can offer on its signed endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Policy {
    /// The policy plants have asked for since OPC UA 1.02 (RSA-OAEP, SHA-256).
    Basic256Sha256,
    /// The current policy (RSA-PSS, AES-256, SHA-256).
    Aes256Sha256RsaPss,
    /// The smaller current policy (RSA-OAEP, AES-128, SHA-256).
    Aes128Sha256RsaOaep,
}

/// A message security mode of the signed endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Mode {
    /// Messages signed.
    Sign,
    /// Messages signed and encrypted.
    SignAndEncrypt,
}

/// `[opcua]`: the OPC UA server with the Machine Vision model (off when the section is absent).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcuaConfig {
    /// `IP:PORT` of the endpoint, e.g. `"127.0.0.1:4840"` (`opc.tcp://127.0.0.1:4840/`).
    pub listen: String,
    /// Must be true for `listen` to be reachable from other machines (then `users_file` is
    /// required, anonymous access and the unsecured endpoint are refused).
    pub expose: bool,
    /// Signed endpoints: each policy with each mode.
    pub policies: Vec<Policy>,
    /// Modes of the signed endpoints.
    pub modes: Vec<Mode>,
    /// The server's certificate and key (`own/`, `private/`, made at the first start when
    /// absent), trusted client certificates (`trusted/`) and rejected ones (`rejected/`).
    pub pki_dir: PathBuf,
    /// Users and their password hashes, one `name:$argon2id$...` line each (mode 0600); made by
    /// `diffad opcua-passwd`.
    pub users_file: Option<PathBuf>,
    /// Anonymous sessions on the unsecured endpoint; loopback only.
    pub anonymous: bool,
    /// Sessions at once; one more is refused.
    pub max_sessions: usize,
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Monitored items per subscription.
    pub max_monitored_items: usize,
    /// Notifications queued per subscription before the oldest are dropped (a client that does
    /// not publish loses its own, nobody else's); also the largest queue a monitored item may
    /// ask for.
    pub max_queued_notifications: usize,
    /// Results queued between the event bus and the server before they are counted as lost.
    pub queue: usize,
    /// `VisionSystem/RecipeManagement` offers the model lifecycle's methods (StageModel,
    /// Shadow, Report, Promote, Rollback) to users from `users_file`, never to anonymous ones.
    pub model_methods: bool,
}

impl Default for OpcuaConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4840".into(),
            expose: false,
            policies: vec![Policy::Basic256Sha256, Policy::Aes256Sha256RsaPss],
            modes: vec![Mode::Sign, Mode::SignAndEncrypt],
            pki_dir: "/var/lib/diffad/opcua-pki".into(),
            users_file: None,
            anonymous: true,
            model_methods: false,
            max_sessions: 64,
            max_subscriptions: 16,
            max_monitored_items: 1000,
            max_queued_notifications: 20_000,
            queue: 65_536,
        }
    }
}

impl OpcuaConfig {
    /// The parsed listen address.
    pub fn addr(&self) -> Result<std::net::SocketAddr, Invalid> {
        self.listen.parse().map_err(|_| {
            Invalid::new(
                "opcua.listen",
                format!(
                    "\"{}\" must be IP:PORT, e.g. \"127.0.0.1:4840\"",
                    self.listen
                ),
            )
        })
    }

    /// Whether the unsecured endpoint (SecurityPolicy None) with anonymous sessions is offered.
    pub fn open_endpoint(&self) -> bool {
        self.anonymous && self.addr().is_ok_and(|a| a.ip().is_loopback())
    }

    /// Check the address against the access rules, and the sizes.
    pub fn validate(&self) -> Result<(), Invalid> {
        let addr = self.addr()?;
        if !addr.ip().is_loopback() {
            if !self.expose {
                return Err(Invalid::new(
                    "opcua.expose",
                    format!(
                        "opcua.listen = \"{}\" can be reached from the network: set opcua.expose = true to mean it \
                         (with opcua.users_file), or listen on 127.0.0.1",
                        self.listen
                    ),
                ));
            }
            if self.anonymous {
                return Err(Invalid::new(
                    "opcua.anonymous",
                    "anonymous sessions are for loopback only: set opcua.anonymous = false off loopback",
                ));
            }
            if self.users_file.is_none() {
                return Err(Invalid::new(
                    "opcua.users_file",
                    "the server off loopback needs users: opcua.users_file (name:hash lines, mode 0600; \
                     `diffad opcua-passwd NAME` prints one)",
                ));
            }
        }
        if self.model_methods && self.users_file.is_none() {
            return Err(Invalid::new(
                "opcua.model_methods",
                "only logged-in users may call the model methods: set opcua.users_file (`diffad opcua-passwd NAME` prints a line)",
            ));
        }
        if self.policies.is_empty() || self.modes.is_empty() {
            return Err(Invalid::new(
                if self.policies.is_empty() {
                    "opcua.policies"
                } else {
                    "opcua.modes"
                },
                "must name at least one: the signed endpoints are the only ones off loopback",
            ));
        }
        let ranges: [(&str, usize, usize, usize); 5] = [
            ("opcua.max_sessions", self.max_sessions, 1, 1024),
            ("opcua.max_subscriptions", self.max_subscriptions, 1, 1000),
            (
                "opcua.max_monitored_items",
                self.max_monitored_items,
                1,
                100_000,
            ),
            (
                "opcua.max_queued_notifications",
                self.max_queued_notifications,
                100,
                1 << 20,
            ),
            ("opcua.queue", self.queue, 16, 1 << 20),
        ];
        crate::config::check_ranges(&ranges)
    }

    /// Files the section names, with the key of each, for the deployment checks.
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path, crate::config::Want)> {
        use crate::config::Want;
        let mut out = Vec::new();
        if let Some(u) = &self.users_file {
            out.push(("opcua.users_file", u.as_path(), Want::Secret));
        }
        out
    }

    /// One line for `check-config`: the endpoint, who may connect, and with what security.
    pub fn describe(&self) -> String {
        let port = self.addr().map_or(0, |a| a.port());
        let policies: Vec<String> = self.policies.iter().map(|p| format!("{p:?}")).collect();
        let modes: Vec<String> = self.modes.iter().map(|m| format!("{m:?}")).collect();
        format!(
            "Machine Vision server on {}: {}signed endpoints {} x {}, {}, pki {}",
            self.url(port),
            if self.open_endpoint() {
                "anonymous without security (loopback), "
            } else {
                ""
            },
            policies.join("/"),
            modes.join("/"),
            match &self.users_file {
                Some(u) => format!("users from {}", u.display()),
                None => "no users file".to_string(),
            },
            self.pki_dir.display()
        )
    }

    /// The endpoint URL clients dial.
    pub fn url(&self, port: u16) -> String {
        match self.addr() {
            Ok(a) => format!("opc.tcp://{}:{port}/", a.ip()),
            Err(_) => format!("opc.tcp://{}/", self.listen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_open_and_the_network_needs_users_without_anonymous() {
        let c = OpcuaConfig::default();
        c.validate().unwrap();
        assert!(c.open_endpoint());
        let open = OpcuaConfig {
            listen: "0.0.0.0:4840".into(),
            ..Default::default()
        };
        assert_eq!(open.validate().unwrap_err().key, "opcua.expose");
        let exposed = OpcuaConfig {
            expose: true,
            ..open
        };
        assert_eq!(exposed.validate().unwrap_err().key, "opcua.anonymous");
        assert!(!exposed.open_endpoint());
        let no_users = OpcuaConfig {
            anonymous: false,
            ..exposed
        };
        assert_eq!(no_users.validate().unwrap_err().key, "opcua.users_file");
        let ok = OpcuaConfig {
            users_file: Some("users".into()),
            ..no_users
        };
        ok.validate().unwrap();
        assert!(!ok.open_endpoint());
        let line = ok.describe();
        assert!(line.starts_with("Machine Vision server on opc.tcp://0.0.0.0:4840/: signed"));
        assert!(line.contains("users from users"), "{line}");
        assert!(OpcuaConfig::default()
            .describe()
            .contains("anonymous without security"));
    }

    #[test]
    fn sizes_addresses_and_empty_lists_are_checked_by_key() {
        let bad = OpcuaConfig {
            listen: "localhost:4840".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "opcua.listen");
        let bad = OpcuaConfig {
            max_sessions: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "opcua.max_sessions");
        let bad = OpcuaConfig {
            policies: vec![],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "opcua.policies");
        // Model methods are for logged-in users: without users nobody could call them.
        let bad = OpcuaConfig {
            model_methods: true,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "opcua.model_methods");
        let toml = "listen = \"127.0.0.1:0\"\npolicies = [\"Basic128Rsa15\"]\n";
        assert!(toml::from_str::<OpcuaConfig>(toml).is_err());
    }
}
