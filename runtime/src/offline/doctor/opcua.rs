//! The OPC UA server's checks: its endpoint can be bound under the access rules, and its
//! certificate (made at the first start, in `pki_dir/own`) is readable and in date.

use super::{check_writable_dir, Check};
use crate::sinks::opcua::OpcuaConfig;
use opcua::crypto::X509;
use std::net::TcpListener;
use std::path::Path;

/// Days before its end from which a certificate is reported as expiring soon.
const EXPIRY_WARN_DAYS: i64 = 30;

/// The endpoint and the certificate of `[opcua]`.
pub fn check_opcua(cfg: Option<&OpcuaConfig>) -> Vec<Check> {
    let Some(cfg) = cfg else {
        return vec![Check::skip("opcua", "off (no [opcua])")];
    };
    vec![check_endpoint(cfg), check_certificate(&cfg.pki_dir)]
}

fn check_endpoint(cfg: &OpcuaConfig) -> Check {
    const NAME: &str = "opcua endpoint";
    if let Err(e) = cfg.validate() {
        return Check::fail(NAME, e.to_string(), format!("fix {}", e.key));
    }
    match TcpListener::bind(&cfg.listen) {
        Ok(l) => {
            drop(l);
            Check::pass(NAME, format!("{} can be bound", cfg.describe()))
        }
        Err(e) => Check::fail(
            NAME,
            format!("cannot bind {}: {e}", cfg.listen),
            "stop what holds the port (`ss -ltnp`; another diffad?), or change opcua.listen",
        ),
    }
}

fn check_certificate(pki: &Path) -> Check {
    const NAME: &str = "opcua certificate";
    let cert = pki.join("own/cert.der");
    let remake = format!(
        "remove {} and {} to have a new one made at the next start (clients then trust it anew)",
        cert.display(),
        pki.join("private/private.pem").display()
    );
    if !cert.exists() {
        // The server makes it at its first start: the folder must be writable then.
        return check_writable_dir(NAME, pki, "opcua.pki_dir");
    }
    let x509 = match std::fs::read(&cert)
        .map_err(|e| e.to_string())
        .and_then(|der| X509::from_der(&der).map_err(|e| e.to_string()))
    {
        Ok(x) => x,
        Err(e) => return Check::fail(NAME, format!("{}: {e}", cert.display()), remake),
    };
    let Ok(not_after) = x509.not_after() else {
        return Check::fail(NAME, format!("{}: no validity", cert.display()), remake);
    };
    let days = not_after
        .signed_duration_since(opcua::types::DateTime::now().as_chrono())
        .num_days();
    let trusted = std::fs::read_dir(pki.join("trusted")).map_or(0, |d| d.count());
    let subject = x509.subject_name();
    if days < 0 {
        Check::fail(
            NAME,
            format!("{} ({subject}) expired {} days ago", cert.display(), -days),
            remake,
        )
    } else {
        Check::pass(
            NAME,
            format!(
                "{} ({subject}) valid {days} more days{}; {trusted} trusted client certificates",
                cert.display(),
                if days < EXPIRY_WARN_DAYS {
                    ": renew it soon"
                } else {
                    ""
                }
            ),
        )
    }
}
