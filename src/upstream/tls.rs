//! TLS origination: a DestinationRule's `trafficPolicy.tls` (spec §2.10)
//! turned into a rustls client configuration for a cluster's connections.
//!
//! - `SIMPLE`: TLS, the server verified against `caCertificates` (a PEM
//!   file), else the system's roots (rustls-native-certs).
//! - `MUTUAL`: the same, and the client presents `clientCertificate` with
//!   `privateKey`.
//! - `sni`: the name sent, else the service's host; the certificate must
//!   name it, or with `subjectAltNames` one of those names instead.
//! - `insecureSkipVerify: true`: the server's certificate is not checked
//!   (the handshake signatures still are).
//! - `ISTIO_MUTUAL`: `MUTUAL` with the workload's mesh certificates from
//!   `--mesh-cert-dir` (`cert-chain.pem`, `key.pem`, `root-cert.pem`, as
//!   Istio mounts them); the server's chain must lead to `root-cert.pem`.
//!   Its name is not checked: mesh certificates name SPIFFE identities,
//!   not hosts, and meshd does not know the expected service accounts.
//! - `DISABLE` or no mode: plain TCP.
//!
//! Files are read when the cluster is built or its policy changes. A
//! configuration that cannot be built never falls back to plain text:
//! every connect fails with the reason (`503 UF`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::resources::{ClientTlsMode, ClientTlsSettings};

/// `--mesh-cert-dir`: set once at start, like the worker count, and read
/// when an `ISTIO_MUTUAL` cluster is built.
static MESH_CERT_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets where `ISTIO_MUTUAL` finds the mesh certificates (the first call
/// wins).
pub fn set_mesh_cert_dir(dir: PathBuf) {
    let _ = MESH_CERT_DIR.set(dir);
}

/// A cluster's TLS origination.
pub struct UpstreamTls {
    /// The settings and host it was built from: equal inputs build an equal
    /// configuration, so a reload that keeps them keeps this.
    settings: ClientTlsSettings,
    host: Arc<str>,
    /// SNI.
    server_name: ServerName<'static>,
    /// The connectors, offering ALPN `http/1.1` and `h2` respectively, or
    /// why there are none (every connect then fails).
    connector: Result<Connectors, String>,
}

/// One TLS configuration, with the ALPN of each upstream HTTP version.
struct Connectors {
    http1: TlsConnector,
    http2: TlsConnector,
}

/// Why a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// The origination `settings` ask for towards `host`; `None` for plain
    /// TCP (`DISABLE` or no mode).
    pub fn build(settings: Option<&ClientTlsSettings>, host: &Arc<str>) -> Option<Arc<Self>> {
        let settings = settings?;
        let mode = settings.mode?;
        if mode == ClientTlsMode::Disable {
            return None;
        }
        let sni = settings.sni.as_deref().filter(|s| !s.is_empty()).unwrap_or(host);
        let unspecified = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let server_name = ServerName::try_from(sni.to_owned()).unwrap_or(unspecified);
        let connector = client_config(mode, settings).map(|mut config| {
            config.alpn_protocols = vec![b"h2".to_vec()];
            let http2 = TlsConnector::from(Arc::new(config.clone()));
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Connectors { http1: TlsConnector::from(Arc::new(config)), http2 }
        });
        Some(Arc::new(UpstreamTls { settings: settings.clone(), host: host.clone(), server_name, connector }))
    }

    /// Whether this was built from `settings` towards `host`.
    pub fn built_from(&self, settings: Option<&ClientTlsSettings>, host: &str) -> bool {
        settings == Some(&self.settings) && &*self.host == host
    }

    /// The TLS handshake over a connected `stream`, offering ALPN `h2`
    /// when `http2`, else `http/1.1`.
    pub async fn connect(&self, stream: TcpStream, http2: bool) -> Result<TlsStream<TcpStream>, TlsError> {
        let connectors = self.connector.as_ref().map_err(|why| TlsError::Config(why.clone()))?;
        let connector = if http2 { &connectors.http2 } else { &connectors.http1 };
        connector.connect(self.server_name.clone(), stream).await.map_err(TlsError::Handshake)
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("settings", &self.settings).field("host", &self.host).finish()
    }
}

fn client_config(mode: ClientTlsMode, settings: &ClientTlsSettings) -> Result<ClientConfig, String> {
    if mode == ClientTlsMode::IstioMutual {
        return mesh_config();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier = verifier(settings, &provider)?;
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match mode {
        ClientTlsMode::Mutual => {
            let (cert, key) = match (&settings.client_certificate, &settings.private_key) {
                (Some(cert), Some(key)) => (cert, key),
                _ => return Err("MUTUAL needs clientCertificate and privateKey".into()),
            };
            let chain = certificates(Path::new(cert))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("privateKey {key}: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// `ISTIO_MUTUAL`: the mesh certificates, the chain checked against the
/// mesh root.
fn mesh_config() -> Result<ClientConfig, String> {
    let dir = MESH_CERT_DIR.get().ok_or("ISTIO_MUTUAL needs --mesh-cert-dir")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certificates(&dir.join("root-cert.pem"))? {
        roots.add(cert).map_err(|e| format!("root-cert.pem: {e}"))?;
    }
    let chain = certificates(&dir.join("cert-chain.pem"))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| format!("key.pem: {e}"))?;
    let verifier = Arc::new(NamelessVerifier { roots: Some(roots), provider: provider.clone() });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(config)
}

/// How the server's certificate is checked.
fn verifier(
    settings: &ClientTlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    if settings.insecure_skip_verify == Some(true) {
        return Ok(Arc::new(NamelessVerifier { roots: None, provider: provider.clone() }));
    }
    let roots = match &settings.ca_certificates {
        Some(file) if !file.is_empty() => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(Path::new(file))? {
                roots.add(cert).map_err(|e| format!("caCertificates {file}: {e}"))?;
            }
            roots
        }
        _ => system_roots()?,
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let names = settings.subject_alt_names.iter().filter_map(|n| ServerName::try_from(n.clone()).ok()).collect();
    Ok(Arc::new(SanVerifier { inner: webpki, names }))
}

/// The certificates of the PEM file `path` (at least one).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?.collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no system root certificates found; set caCertificates".into());
    }
    Ok(roots)
}

/// WebPKI verification, against `subjectAltNames` instead of the SNI when
/// the policy lists them: the certificate must name one of them.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for name in &self.names {
            match self.inner.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A check of the server's certificate that ignores its names: with
/// `roots`, the chain must lead to one of them (`ISTIO_MUTUAL`: mesh
/// certificates name identities, not hosts); without, any certificate
/// passes (`insecureSkipVerify`). The handshake's signatures are checked
/// either way.
#[derive(Debug)]
struct NamelessVerifier {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NamelessVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            let algorithms = self.provider.signature_verification_algorithms.all;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algorithms)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
