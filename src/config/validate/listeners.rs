//! Listeners, their TLS certificates and the admin listener.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::file::{FileAdmin, FileCertificate, FileListener, FileTls};
use crate::config::tls;
use crate::config::values::{binds_conflict, is_dns_name};
use crate::config::{AdminConfig, CertificateConfig, ListenerConfig, TlsConfig};

use super::{Checked, Reported, Validator};

/// Shortest admin token accepted: 32 bytes is what a guessing attacker cannot cover.
const MIN_ADMIN_TOKEN_BYTES: usize = 32;

impl Validator<'_> {
    pub(super) fn listeners(&mut self, listeners: &[FileListener]) -> Checked<Vec<ListenerConfig>> {
        if listeners.is_empty() {
            return Err(self.error("listeners", "at least one listener is required"));
        }
        let mut out = Ok(Vec::with_capacity(listeners.len()));
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut binds: Vec<(SocketAddr, usize)> = Vec::new();
        for (i, listener) in listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let name = self.name(&format!("{path}.name"), &listener.name, "listener name");
            let name = name.and_then(|name| match names.insert(&listener.name.0, i) {
                Some(first) => Err(self.error(
                    &format!("{path}.name"),
                    format!("duplicate listener name {name:?} (also listeners[{first}])"),
                )),
                None => Ok(name),
            });
            let bind = self.socket_addr(&format!("{path}.bind"), &listener.bind);
            let bind = bind.and_then(|bind| match binds.iter().find(|(other, _)| binds_conflict(bind, *other)) {
                Some((_, first)) => {
                    Err(self.error(&format!("{path}.bind"), format!("bind {bind} is also used by listeners[{first}]")))
                }
                None => {
                    binds.push((bind, i));
                    Ok(bind)
                }
            });
            let tls = listener.tls.as_ref().map(|tls| self.tls(&format!("{path}.tls"), tls)).transpose();
            match (name, bind, tls, &mut out) {
                (Ok(name), Ok(bind), Ok(tls), Ok(out)) => out.push(ListenerConfig { name, bind, tls }),
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) => out = Err(r),
                (_, _, _, Err(_)) => {}
            }
        }
        out
    }

    pub(super) fn tls(&mut self, path: &str, tls: &FileTls) -> Checked<TlsConfig> {
        if tls.certificates.is_empty() {
            return Err(self.error(&format!("{path}.certificates"), "at least one certificate is required"));
        }
        let mut certificates = Ok(Vec::new());
        let strict = tls.strict_key_permissions.unwrap_or(false);
        for (i, certificate) in tls.certificates.iter().enumerate() {
            let item = format!("{path}.certificates[{i}]");
            let checked = self.certificate(&item, certificate).and_then(|c| {
                self.key_permissions(&format!("{item}.key"), &c.key_path, strict)?;
                Ok(c)
            });
            match (checked, &mut certificates) {
                (Ok(c), Ok(all)) => all.push(c),
                (Err(r), _) => certificates = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        Ok(TlsConfig { certificates: certificates? })
    }

    /// A private key that other users can read is a key that may already be someone else's:
    /// a warning, or an error with `strict_key_permissions`.
    fn key_permissions(&mut self, path: &str, key: &std::path::Path, strict: bool) -> Checked<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(mode) = std::fs::metadata(key).map(|m| m.permissions().mode()) else { return Ok(()) };
        if mode & 0o077 == 0 {
            return Ok(());
        }
        let message = format!(
            "private key {} is readable by {} (mode {:o}); restrict it with chmod 600",
            key.display(),
            if mode & 0o007 != 0 { "everyone" } else { "its group" },
            mode & 0o777
        );
        if strict {
            return Err(self.error(path, message));
        }
        self.warn(path, message);
        Ok(())
    }

    pub(super) fn certificate(&mut self, path: &str, file: &FileCertificate) -> Checked<CertificateConfig> {
        let loaded = tls::load_certificate(&self.provider, &self.base_dir, file.cert.as_str(), file.key.as_str());
        loaded.map_err(|problems| {
            let tls::CertificateProblems { first, second } = *problems;
            let reported = self.certificate_error(path, &first);
            if let Some(second) = second {
                self.certificate_error(path, &second);
            }
            reported
        })
    }

    pub(super) fn certificate_error(&mut self, path: &str, problem: &tls::CertificateError) -> Reported {
        let field = match problem.file() {
            tls::PemFile::Cert => format!("{path}.cert"),
            tls::PemFile::Key => format!("{path}.key"),
        };
        self.error(&field, problem.to_string())
    }

    pub(super) fn admin(&mut self, admin: &FileAdmin, listeners: &[FileListener]) -> Checked<AdminConfig> {
        let bind = self.socket_addr("admin.bind", &admin.bind);
        let token_env = admin.token_env.as_ref().map(|name| self.env_name("admin.token_env", name)).transpose();
        if let Ok(name) = &token_env {
            match name.as_deref().map(|n| (n, (self.env)(n))) {
                Some((name, None)) => self.warn(
                    "admin.token_env",
                    format!(
                        "environment variable {name} is not set; tether proxy will refuse to \
                         start until it is set"
                    ),
                ),
                Some((name, Some(token))) if token.is_empty() => self.warn(
                    "admin.token_env",
                    format!(
                        "environment variable {name} is empty; tether proxy will refuse to \
                         start until it is set"
                    ),
                ),
                Some((name, Some(token))) if token.len() < MIN_ADMIN_TOKEN_BYTES => {
                    self.error(
                        "admin.token_env",
                        format!(
                            "the token in {name} is {} bytes long; use at least {MIN_ADMIN_TOKEN_BYTES} \
                             random bytes (e.g. openssl rand -hex 32)",
                            token.len()
                        ),
                    );
                }
                _ => {}
            }
        }
        let mut allowed_hosts = Ok(Vec::new());
        for (i, host) in admin.allowed_hosts.iter().flatten().enumerate() {
            let name = host.as_str().to_ascii_lowercase();
            match (is_dns_name(&name), &mut allowed_hosts) {
                (true, Ok(list)) => list.push(name),
                (false, _) => {
                    allowed_hosts = Err(self.error(
                        &format!("admin.allowed_hosts[{i}]"),
                        format!("invalid host name {:?} (a DNS name, without port)", host.as_str()),
                    ))
                }
                (true, Err(_)) => {}
            }
        }
        let bind = bind.and_then(|bind| {
            let conflict = listeners
                .iter()
                .enumerate()
                .find(|(_, l)| l.bind.as_str().parse::<SocketAddr>().is_ok_and(|other| binds_conflict(bind, other)));
            if let Some((i, _)) = conflict {
                return Err(self.error("admin.bind", format!("admin bind {bind} is also used by listeners[{i}]")));
            }
            if !bind.ip().is_loopback() && admin.token_env.is_none() {
                return Err(self.error(
                    "admin.bind",
                    format!(
                        "admin bind {bind} is not a loopback address: set token_env so that \
                         /admin/* requires a bearer token"
                    ),
                ));
            }
            Ok(bind)
        });
        Ok(AdminConfig {
            bind: bind?,
            token_env: token_env?,
            allowed_hosts: allowed_hosts?,
            metrics_public: admin.metrics_public.unwrap_or(false),
        })
    }
}
