//! Who may open an OPC UA session: anonymous on the loopback endpoint only, and users whose
//! passwords match the Argon2 hashes of `opcua.users_file`. Failed logins are counted.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use opcua::server::authenticator::{
    user_pass_security_policy_id, user_pass_security_policy_uri, AuthManager, Password, UserToken,
};
use opcua::server::{ServerEndpoint, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{Error, StatusCode, UAString, UserTokenPolicy, UserTokenType};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The user token id that endpoints name to take username/password logins.
pub const USERS_TOKEN_ID: &str = "users";

/// Why the users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `name:$argon2...`.
    #[error("{file} line {line}: {why}")]
    Line {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// Users and their PHC-format Argon2 hashes.
#[derive(Debug, Clone, Default)]
pub struct Users(BTreeMap<String, String>);

impl Users {
    /// Read `name:hash` lines; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| UsersError::Line { file, line, why })
    }

    /// Parse the file's text; an error says the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err((i + 1, "expected name:hash".into()));
            };
            let parsed = PasswordHash::new(hash).map_err(|e| (i + 1, format!("hash: {e}")))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err((i + 1, format!("{} is not an Argon2 hash", parsed.algorithm)));
            }
            if name.is_empty() || users.insert(name.to_string(), hash.to_string()).is_some() {
                return Err((i + 1, format!("user \"{name}\" empty or given twice")));
            }
        }
        Ok(Self(users))
    }

    /// Whether `password` is `name`'s.
    pub fn check(&self, name: &str, password: &str) -> bool {
        self.0
            .get(name)
            .and_then(|h| PasswordHash::new(h).ok())
            .is_some_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A users-file line for `name` with a fresh salt (Argon2id, the crate's default parameters).
pub fn hash_line(name: &str, password: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        return Err(format!(
            "user name \"{name}\" must be non-empty, without ':' or spaces"
        ));
    }
    let mut salt = [0u8; 16];
    getrandom_fill(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{name}:{hash}"))
}

/// Salt from the kernel's random source.
fn getrandom_fill(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("/dev/urandom: {e}"))
}

/// The server's authenticator.
pub struct Authenticator {
    users: Users,
    /// Failed logins (wrong password, unknown user, anonymous where it is not offered).
    pub failures: Arc<AtomicU64>,
}

impl Authenticator {
    /// With these users; failures counted in `failures`.
    pub fn new(users: Users, failures: Arc<AtomicU64>) -> Self {
        Self { users, failures }
    }

    fn refuse(&self, why: String) -> Error {
        self.failures.fetch_add(1, Ordering::Relaxed);
        log::warn!("opcua: login refused: {why}");
        Error::new(StatusCode::BadIdentityTokenRejected, why)
    }
}

#[async_trait::async_trait]
impl AuthManager for Authenticator {
    async fn authenticate_anonymous_token(&self, endpoint: &ServerEndpoint) -> Result<(), Error> {
        if endpoint.user_token_ids.contains(ANONYMOUS_USER_TOKEN_ID) {
            Ok(())
        } else {
            Err(self.refuse(format!(
                "anonymous on endpoint {} {}",
                endpoint.security_policy, endpoint.security_mode
            )))
        }
    }

    async fn authenticate_username_identity_token(
        &self,
        endpoint: &ServerEndpoint,
        username: &str,
        password: &Password,
    ) -> Result<UserToken, Error> {
        if !endpoint.user_token_ids.contains(USERS_TOKEN_ID) {
            return Err(self.refuse(format!("user \"{username}\" on an endpoint without users")));
        }
        // Argon2 takes tens of milliseconds by design: off the runtime's only worker, so a
        // client guessing passwords cannot stall the other sessions' publishing.
        let (users, name, pass) = (
            self.users.clone(),
            username.to_string(),
            password.get().to_string(),
        );
        let ok = tokio::task::spawn_blocking(move || users.check(&name, &pass))
            .await
            .unwrap_or(false);
        if ok {
            Ok(UserToken(username.to_string()))
        } else {
            Err(self.refuse(format!(
                "user \"{username}\": wrong password or no such user"
            )))
        }
    }

    /// The model methods change what the line inspects with: logged-in users only, never an
    /// anonymous session (on loopback any local process could open one).
    fn is_user_executable(&self, token: &UserToken, method_id: &opcua::types::NodeId) -> bool {
        !(token.is_anonymous() && super::methods::is_model_method(method_id))
    }

    fn user_token_policies(&self, endpoint: &ServerEndpoint) -> Vec<UserTokenPolicy> {
        let mut out = Vec::new();
        if endpoint.user_token_ids.contains(ANONYMOUS_USER_TOKEN_ID) {
            out.push(UserTokenPolicy {
                policy_id: UAString::from("anonymous"),
                token_type: UserTokenType::Anonymous,
                issued_token_type: UAString::null(),
                issuer_endpoint_url: UAString::null(),
                security_policy_uri: UAString::null(),
            });
        }
        if endpoint.user_token_ids.contains(USERS_TOKEN_ID) && !self.users.is_empty() {
            // async-opcua accepts a user token only under the policy id it derives from the
            // endpoint (any other is refused before this authenticator sees, or counts, it);
            // the password is encrypted with the endpoint's own policy, never None here.
            out.push(UserTokenPolicy {
                policy_id: user_pass_security_policy_id(endpoint),
                token_type: UserTokenType::UserName,
                issued_token_type: UAString::null(),
                issuer_endpoint_url: UAString::null(),
                security_policy_uri: user_pass_security_policy_uri(endpoint),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_line_checks_its_password_and_no_other() {
        let line = hash_line("plc", "s3cret").unwrap();
        assert!(line.starts_with("plc:$argon2id$"));
        let users = Users::parse(&format!("# users\n\n{line}\n")).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.check("plc", "s3cret"));
        assert!(!users.check("plc", "s3cret "));
        assert!(!users.check("mes", "s3cret"));
        assert!(hash_line("a b", "x").is_err());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        assert_eq!(Users::parse("plc\n").unwrap_err().0, 1);
        assert_eq!(Users::parse("# c\nplc:plaintext\n").unwrap_err().0, 2);
        let line = hash_line("plc", "x").unwrap();
        assert_eq!(Users::parse(&format!("{line}\n{line}\n")).unwrap_err().0, 2);
    }
}
