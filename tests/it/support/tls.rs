//! Certificates made on the fly: a test CA and leaf certificates signed by it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_der: CertificateDer<'static>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, "tether test CA");
        let key = KeyPair::generate().expect("key generation");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self { cert_der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names).expect("valid names");
        let key = KeyPair::generate().expect("key generation");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().clone() }
    }

    /// Write a leaf for `names` as `<stem>.crt` / `<stem>.key` in `dir`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Leaf) {
        let leaf = self.leaf(names);
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        (cert, key, leaf)
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("CA cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// An HTTP/1.1 TLS connection to `addr` for `localhost`, trusting only this CA; returns the
    /// leaf certificate the server presented, and the stream.
    pub async fn connect(&self, addr: SocketAddr) -> (CertificateDer<'static>, TlsStream<TcpStream>) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(self.client_config(&[b"http/1.1"]));
        let name = ServerName::try_from("localhost").expect("name");
        let tls = super::within("TLS handshake", connector.connect(name, tcp)).await.expect("TLS handshake");
        let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned();
        (presented, tls)
    }
}
