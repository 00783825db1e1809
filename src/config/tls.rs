//! Certificate files named by `listeners[].tls.certificates`: read, parsed and matched.
//!
//! Owns: reading a PEM chain and a PEM private key (PKCS#8, PKCS#1 or SEC1), checking that
//! they belong together with the given rustls provider, and listing the leaf's DNS names for
//! SNI. Must not: build TLS server configs or pick certificates per connection (that is the
//! server's job); it only hands over a checked [`CertifiedKey`].

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::CertificateConfig;

/// Which of the two files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PemFile {
    Cert,
    Key,
}

/// One problem with a certificate/key pair. `what` is the file as the user wrote it, plus
/// where it resolved to when that differs (see [`describe`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum CertificateError {
    #[error("{what} does not exist")]
    Missing { file: PemFile, what: String },
    #[error("cannot read {what}: {source}")]
    Read { file: PemFile, what: String, source: std::io::Error },
    #[error("{what} is not valid PEM: {source}")]
    Pem { file: PemFile, what: String, source: rustls_pki_types::pem::Error },
    #[error("{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { what: String },
    #[error("{what}: certificate #{index} does not parse: {reason}")]
    BadCertificate { what: String, index: usize, reason: String },
    #[error("{what} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { what: String },
    #[error("private key {key:?} does not match certificate {cert:?}")]
    Mismatch { cert: String, key: String },
    #[error("unusable private key {key:?}: {source}")]
    UnusableKey { key: String, source: rustls::Error },
}

impl CertificateError {
    pub(super) fn file(&self) -> PemFile {
        match self {
            Self::Missing { file, .. } | Self::Read { file, .. } | Self::Pem { file, .. } => *file,
            Self::NoCertificate { .. } | Self::BadCertificate { .. } => PemFile::Cert,
            Self::NoKey { .. } | Self::Mismatch { .. } | Self::UnusableKey { .. } => PemFile::Key,
        }
    }
}

/// At least one problem: the certificate's, the key's, or both.
#[derive(Debug)]
pub(super) struct CertificateProblems {
    pub(crate) first: CertificateError,
    pub(crate) second: Option<CertificateError>,
}

/// Load `cert` and `key` (relative paths resolve against `base_dir`) and check they match.
/// Both files are examined before failing so that both problems are reported at once.
pub(super) fn load_certificate(
    provider: &CryptoProvider,
    base_dir: &Path,
    cert: &str,
    key: &str,
) -> Result<CertificateConfig, Box<CertificateProblems>> {
    let cert_path = base_dir.join(cert);
    let key_path = base_dir.join(key);
    let chain = read_chain(cert, &cert_path);
    let private_key = read_key(key, &key_path);
    let ((chain, names), private_key) = match (chain, private_key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (Err(first), Err(second)) => {
            return Err(Box::new(CertificateProblems { first, second: Some(second) }));
        }
        (Err(first), Ok(_)) | (Ok(_), Err(first)) => {
            return Err(Box::new(CertificateProblems { first, second: None }));
        }
    };
    let certified = CertifiedKey::from_der(chain, private_key, provider).map_err(|e| {
        let first = match e {
            rustls::Error::InconsistentKeys(_) => {
                CertificateError::Mismatch { cert: cert.to_owned(), key: key.to_owned() }
            }
            source => CertificateError::UnusableKey { key: key.to_owned(), source },
        };
        Box::new(CertificateProblems { first, second: None })
    })?;
    Ok(CertificateConfig { cert_path, key_path, certified: Arc::new(certified), names })
}

/// The PEM chain in `resolved` and the leaf's DNS names.
fn read_chain(written: &str, resolved: &Path) -> Result<(Vec<CertificateDer<'static>>, Vec<String>), CertificateError> {
    let what = format!("certificate file {}", describe(written, resolved));
    let pem = read(PemFile::Cert, &what, resolved)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertificateError::Pem { file: PemFile::Cert, what: what.clone(), source })?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate { what });
    }
    let mut names = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let parsed = x509_parser::parse_x509_certificate(der.as_ref()).map(|(_, parsed)| parsed).map_err(|e| {
            CertificateError::BadCertificate { what: what.clone(), index: i + 1, reason: e.to_string() }
        })?;
        if i == 0 {
            names = dns_names(&parsed);
        }
    }
    Ok((chain, names))
}

fn read_key(written: &str, resolved: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    let what = format!("key file {}", describe(written, resolved));
    let pem = read(PemFile::Key, &what, resolved)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertificateError::NoKey { what },
        source => CertificateError::Pem { file: PemFile::Key, what, source },
    })
}

fn read(file: PemFile, what: &str, resolved: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(resolved).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CertificateError::Missing { file, what: what.to_owned() },
        _ => CertificateError::Read { file, what: what.to_owned(), source },
    })
}

/// `"written"`, plus where it resolved to when that differs, so a relative path that
/// resolved somewhere unexpected is obvious.
pub(super) fn describe(written: &str, resolved: &Path) -> String {
    if Path::new(written) == resolved {
        format!("{written:?}")
    } else {
        format!("{written:?} (resolved to {:?})", resolved.display().to_string())
    }
}

/// DNS subjectAltNames of a leaf, lowercase (SNI comparisons are case-insensitive).
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}
