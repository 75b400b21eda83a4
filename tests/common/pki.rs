//! Certificates made in the tests (rcgen): a CA and the leaves it signs,
//! as PEM files in a temporary directory; and a TLS client for meshd's
//! HTTPS listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA, and PEM files for it (`ca.pem`) and for leaves it signs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let pki = Pki { dir: tempfile::tempdir().expect("temp dir"), ca };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).expect("write ca.pem");
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A leaf for `names`, written to `NAME.pem` and `NAME.key`.
    pub fn leaf(&self, name: &str, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        self.leaf_with(name, params)
    }

    /// A leaf made from `params` (subject, SANs of any type), written to
    /// `NAME.pem` and `NAME.key`.
    pub fn leaf_with(&self, name: &str, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        let (cert_path, key_path) = (self.path(&format!("{name}.pem")), self.path(&format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// A `--credentials-dir` holding the credential `name` (`tls.crt`,
    /// `tls.key`) copied from the PEM files `cert` and `key`.
    pub fn credentials_dir(name: &str, cert: &str, key: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("credentials dir");
        std::fs::create_dir(dir.path().join(name)).expect("credential dir");
        std::fs::copy(cert, dir.path().join(name).join("tls.crt")).expect("copy tls.crt");
        std::fs::copy(key, dir.path().join(name).join("tls.key")).expect("copy tls.key");
        dir
    }

    /// A client configuration trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(Path::new(&self.path("ca.pem"))).expect("read ca.pem") {
            roots.add(cert.expect("CA cert")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Connects to `addr` with TLS, sending `sni`; returns the stream, the
/// server's leaf certificate and the ALPN protocol chosen.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>, Option<Vec<u8>>)> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let tls = TlsConnector::from(config).connect(name, stream).await?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| std::io::Error::other("no certificate"))?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, leaf, alpn))
}

/// The DER of the first certificate of the PEM file `path`.
pub fn der_of(path: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(Path::new(path)).expect("read cert").next().expect("a cert").expect("cert")
}

/// A server configuration with the certificate `cert`/`key` (PEM files),
/// offering `alpn`.
pub fn server_config(cert: &str, key: &str, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(Path::new(cert)).expect("read cert").map(|c| c.expect("cert")).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("read key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
