//! TLS termination: rustls with the ring provider, TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, certificates chosen by SNI, and the connection type ([`TlsStream`]) that holds
//! no buffer while nothing is in flight.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

mod stream;

pub use stream::{TlsStream, accept};

thread_local! {
    /// The SNI name of the ClientHello the certificate resolver last saw on this thread.
    /// rustls's unbuffered server connection does not expose the name, and the resolver runs
    /// inside the handshake step [`TlsStream`] drives on this thread, which takes the name
    /// right after that step returns.
    static HELLO_NAME: Cell<Option<Box<str>>> = const { Cell::new(None) };
}

/// The SNI name recorded by the resolver since the last call, if any.
fn take_hello_name() -> Option<Box<str>> {
    HELLO_NAME.take()
}

/// Picks a certificate by the client's SNI name: an exact name first, then a wildcard
/// (`*.example.com` covers one label), then the first configured certificate.
#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `None` when `tls` lists no certificate (config validation prevents that).
    pub(crate) fn new(tls: &TlsConfig) -> Option<Self> {
        let default = tls.certificates.first()?.certified.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in &tls.certificates {
            for name in &cert.names {
                // Earlier certificates win for a name listed twice, like "first is default".
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert_with(|| cert.certified.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| cert.certified.clone()),
                };
            }
        }
        Some(Self { exact, wildcard, default })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(cert) = self.exact.get(&name) {
            return cert.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(cert) = self.wildcard.get(parent)
        {
            return cert.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        HELLO_NAME.set(hello.server_name().map(Into::into));
        Some(self.pick(hello.server_name()))
    }
}

/// The rustls server settings of one TLS listener.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let resolver = SniResolver::new(tls).ok_or_else(|| rustls::Error::General("no certificate configured".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
