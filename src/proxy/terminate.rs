//! TLS termination for a Gateway port's `HTTPS` servers (issue 6): one
//! rustls server configuration per port, choosing each handshake's
//! certificate by SNI among the port's servers.
//!
//! - Certificates: `serverCertificate` and `privateKey` (PEM files), or
//!   `credentialName` read from `--credentials-dir/NAME/` as a mounted
//!   Kubernetes TLS secret lays it out (`tls.crt`, `tls.key`, `ca.crt`).
//! - SNI: the server whose `hosts` name it (exact, then `*.suffix`, then
//!   `*`); without SNI, or with a name no server has, the port's first
//!   server answers.
//! - `MUTUAL`: client certificates are required and verified against
//!   `caCertificates` (or the credential's `ca.crt`); one port shares one
//!   client verifier, the first `MUTUAL` server's.
//! - `minProtocolVersion` / `maxProtocolVersion`: `TLSV1_2`, `TLSV1_3`.
//! - `cipherSuites` (OpenSSL or IANA names) restrict the TLS 1.2 suites,
//!   as Envoy's do; TLS 1.3 suites are not configurable. Names rustls has
//!   no suite for are ignored (all of rustls' suites are AEAD with ECDHE).
//! - ALPN: `h2` and `http/1.1`.
//! - Each certificate's URI SANs are read once, when the configuration is
//!   built: after a handshake [`Termination::local_uri_sans`] names those
//!   of the certificate the SNI chose, for `x-forwarded-client-cert`'s
//!   `By=` ([`xfcc`](super::xfcc)); rustls does not say which one it sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::xfcc;
use crate::config::host;
use crate::routing::TlsServer;

/// Why a port's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TerminateError(String);

/// TLS termination for one port: the configuration its handshakes use and
/// the certificates it chooses among.
#[derive(Debug)]
pub struct Termination {
    pub config: Arc<ServerConfig>,
    /// The configuration's certificate resolver, shared with it.
    certs: Arc<BySni>,
}

/// Chooses the certificate by SNI among the port's servers.
#[derive(Debug)]
struct BySni {
    /// Each server's certificate, in configuration order.
    certs: Vec<Served>,
}

/// One server's certificate and the names it is chosen for.
#[derive(Debug)]
struct Served {
    /// The SNI names it answers (the server's `hosts`).
    hosts: Vec<String>,
    key: Arc<CertifiedKey>,
    /// The URI SANs of its leaf.
    uri_sans: Vec<String>,
}

// === impl Termination ===

impl Termination {
    /// Builds the termination for `servers` (the `HTTPS` servers of one
    /// port), reading `credentialName`s under `credentials`.
    pub fn new(servers: &[TlsServer], credentials: Option<&Path>) -> Result<Arc<Termination>, TerminateError> {
        let provider = Arc::new(provider(servers));
        let mut certs = Vec::with_capacity(servers.len());
        for server in servers {
            let files = Files::of(server, credentials)?;
            let key = certified_key(&files, &provider)?;
            let uri_sans = key.end_entity_cert().map(|leaf| xfcc::uri_sans(leaf)).unwrap_or_default();
            certs.push(Served { hosts: server.hosts.clone(), key: Arc::new(key), uri_sans });
        }
        if certs.is_empty() {
            return Err(TerminateError("no HTTPS server".into()));
        }
        let certs = Arc::new(BySni { certs });
        let config = server_config(servers, credentials, provider, certs.clone())?;
        Ok(Arc::new(Termination { config, certs }))
    }

    /// The URI SANs of the certificate sent to a client that asked for
    /// `sni`.
    pub fn local_uri_sans(&self, sni: Option<&str>) -> &[String] {
        self.certs.select(sni).map(|served| served.uri_sans.as_slice()).unwrap_or_default()
    }
}

/// The server configuration for `servers`, choosing among `certs`.
fn server_config(
    servers: &[TlsServer],
    credentials: Option<&Path>,
    provider: Arc<CryptoProvider>,
    certs: Arc<BySni>,
) -> Result<Arc<ServerConfig>, TerminateError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(servers))
        .map_err(|e| TerminateError(e.to_string()))?;
    let mutual = servers.iter().find(|s| s.settings.mode.as_deref() == Some("MUTUAL"));
    let builder = match mutual {
        None => builder.with_no_client_auth(),
        Some(server) => {
            let files = Files::of(server, credentials)?;
            let ca = files.ca.ok_or_else(|| TerminateError("MUTUAL needs caCertificates".into()))?;
            let mut roots = RootCertStore::empty();
            for cert in certificates(&ca)? {
                roots.add(cert).map_err(|e| TerminateError(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TerminateError(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls' ring provider, its TLS 1.2 suites limited to the `cipherSuites`
/// the port's servers list (all of them when none lists any).
fn provider(servers: &[TlsServer]) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let wanted: Vec<String> = servers.iter().flat_map(|s| &s.settings.cipher_suites).map(|n| iana_name(n)).collect();
    if !wanted.is_empty() {
        provider.cipher_suites.retain(|suite| {
            suite.version() == &rustls::version::TLS13 || wanted.contains(&format!("{:?}", suite.suite()))
        });
    }
    provider
}

/// The IANA name (as rustls prints it) of an OpenSSL cipher name; IANA
/// names pass through.
fn iana_name(name: &str) -> String {
    let name = name.trim();
    if name.starts_with("TLS_") {
        return name.to_owned();
    }
    let Some(rest) = name.strip_prefix("ECDHE-") else { return name.to_owned() };
    let (auth, cipher) = rest.split_once('-').unwrap_or((rest, ""));
    let cipher = match cipher {
        "AES128-GCM-SHA256" => "AES_128_GCM_SHA256",
        "AES256-GCM-SHA384" => "AES_256_GCM_SHA384",
        "CHACHA20-POLY1305" => "CHACHA20_POLY1305_SHA256",
        other => other,
    };
    format!("TLS_ECDHE_{auth}_WITH_{cipher}")
}

/// Where one server's certificate, key and client CA are.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

impl Files {
    fn of(server: &TlsServer, credentials: Option<&Path>) -> Result<Files, TerminateError> {
        let s = &server.settings;
        if let Some(name) = s.credential_name.as_deref().filter(|n| !n.is_empty()) {
            let dir = credentials
                .ok_or_else(|| TerminateError(format!("credentialName {name} needs --credentials-dir")))?
                .join(name);
            let ca = Some(dir.join("ca.crt")).filter(|p| p.exists());
            return Ok(Files { cert: dir.join("tls.crt"), key: dir.join("tls.key"), ca });
        }
        match (&s.server_certificate, &s.private_key) {
            (Some(cert), Some(key)) => Ok(Files {
                cert: cert.into(),
                key: key.into(),
                ca: s.ca_certificates.as_deref().filter(|c| !c.is_empty()).map(PathBuf::from),
            }),
            _ => {
                Err(TerminateError("an HTTPS server needs serverCertificate and privateKey, or credentialName".into()))
            }
        }
    }
}

fn certified_key(files: &Files, provider: &CryptoProvider) -> Result<CertifiedKey, TerminateError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TerminateError(format!("{}: {e}", files.key.display())))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TerminateError(format!("{}: {e}", files.cert.display())))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TerminateError> {
    crate::upstream::tls::certificates(path).map_err(TerminateError)
}

/// The protocol versions every server of the port allows.
fn versions(servers: &[TlsServer]) -> Vec<&'static SupportedProtocolVersion> {
    let rank = |v: Option<&str>, default: u8| match v {
        Some("TLSV1_3") => 3,
        Some("TLSV1_2") => 2,
        Some("TLSV1_0") | Some("TLSV1_1") => 2,
        _ => default,
    };
    let min = servers.iter().map(|s| rank(s.settings.min_protocol_version.as_deref(), 2)).max().unwrap_or(2);
    let max = servers.iter().map(|s| rank(s.settings.max_protocol_version.as_deref(), 3)).min().unwrap_or(3).max(min);
    let mut out = Vec::new();
    if min <= 3 && max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if min <= 2 {
        out.push(&rustls::version::TLS12);
    }
    out
}

// === impl BySni ===

impl BySni {
    /// The certificate for `sni`: the server naming it exactly, else by
    /// `*.suffix`, else `*`, else (or without SNI) the first.
    fn select(&self, sni: Option<&str>) -> Option<&Served> {
        let first = self.certs.first();
        let Some(name) = sni.map(str::to_ascii_lowercase) else { return first };
        let serving = |names: &dyn Fn(&str) -> bool| self.certs.iter().find(|s| s.hosts.iter().any(|h| names(h)));
        serving(&|h| h.eq_ignore_ascii_case(&name))
            .or_else(|| serving(&|h| h.starts_with("*.") && host::covers(h, &name)))
            .or_else(|| serving(&|h| h == "*"))
            .or(first)
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(hello.server_name()).map(|served| served.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::ServerTlsSettings;

    #[test]
    fn cipher_suites_limit_tls12_only() {
        assert_eq!(iana_name("ECDHE-ECDSA-AES128-GCM-SHA256"), "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(iana_name("ECDHE-RSA-CHACHA20-POLY1305"), "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
        let settings = ServerTlsSettings {
            cipher_suites: vec!["ECDHE-RSA-AES256-GCM-SHA384".into(), "AES128-SHA".into()],
            ..ServerTlsSettings::default()
        };
        let provider = provider(&[TlsServer { hosts: vec!["*".into()], settings }]);
        let names: Vec<String> = provider.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert!(names.contains(&"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_owned()), "{names:?}");
        assert!(!names.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("TLS13_")).count(), 3, "TLS 1.3 suites stay: {names:?}");
    }
}
