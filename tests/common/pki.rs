//! TLS material the tests make with `openssl`: a CA, a server certificate for 127.0.0.1, a
//! client certificate it signed, and a rogue self-signed one.

use std::path::PathBuf;
use std::process::Command;

/// TLS material made here: a CA, a server certificate for 127.0.0.1, a client certificate.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sh = |script: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(d)
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{script}: {} (these tests need openssl: `scripts/setup --test-deps`)",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem");
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            sh(&format!(
                "openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr && \
                 printf '%s\\n' '{ext}' > {name}.ext && \
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem"
            ));
        }
        // A self-signed client certificate no server here may accept.
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue -keyout rogue.key -out rogue.pem");
        // Mosquitto started as root drops to its own user, which must read these (tests that need
        // a private key kept private chmod it back).
        sh("chmod 755 . && chmod 644 *");
        Self { dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}
