//! Warnings for TLS private key files anyone on the host may read.
//!
//! meshd never reads a key's contents for anything but the TLS handshake
//! (the config dump shows the paths the resources name); this module looks
//! only at permissions. A key file whose mode grants read to "other"
//! (`mode & 0o004`) is reported as a warning naming the file: the
//! configuration still applies, as Envoy's does.
//!
//! Files checked: Gateway `tls.privateKey`, DestinationRule
//! `tls.privateKey` (top level, per port, per subset), and, when the proxy
//! knows the directories, `tls.key` of each Gateway `credentialName` and
//! `key.pem` of `--mesh-cert-dir`. A file that does not exist is not this
//! module's concern (the TLS setup reports it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::resources::{ClientTlsSettings, DestinationRule, Resource};
use super::{Config, Problem};

/// The "other" read bit.
const WORLD_READABLE: u32 = 0o004;

/// Directories of key files named by the proxy's flags rather than by the
/// resources.
#[derive(Clone, Debug, Default)]
pub struct KeyDirs {
    /// `--credentials-dir`: `NAME/tls.key` for each `credentialName: NAME`.
    pub credentials: Option<PathBuf>,
    /// `--mesh-cert-dir`: `key.pem`.
    pub mesh_cert: Option<PathBuf>,
}

/// One warning for each world-readable private key file `config` (or
/// `dirs`) names.
pub fn world_readable(config: &Config, dirs: &KeyDirs) -> Vec<Problem> {
    let mut keys: Vec<(Option<Arc<Path>>, PathBuf)> = Vec::new();
    for gateway in &config.gateways {
        for server in &gateway.spec.servers {
            let Some(tls) = &server.tls else { continue };
            if let Some(key) = &tls.private_key {
                keys.push((Some(gateway.source.file.clone()), PathBuf::from(key)));
            }
            if let Some(dir) = &dirs.credentials {
                let names = tls.credential_name.iter().chain(&tls.credential_names);
                keys.extend(names.map(|name| (Some(gateway.source.file.clone()), dir.join(name).join("tls.key"))));
            }
        }
    }
    for rule in &config.destination_rules {
        for tls in client_tls(rule) {
            if let Some(key) = &tls.private_key {
                keys.push((Some(rule.source.file.clone()), PathBuf::from(key)));
            }
        }
    }
    if let Some(dir) = &dirs.mesh_cert {
        keys.push((None, dir.join("key.pem")));
    }
    keys.sort_by(|a, b| a.1.cmp(&b.1));
    keys.dedup_by(|a, b| a.1 == b.1);
    keys.into_iter()
        .filter(|(_, key)| is_world_readable(key))
        .map(|(file, key)| {
            let message = format!(
                "private key file {} is world-readable; restrict it (chmod o-r, e.g. 0600 or 0640)",
                key.display()
            );
            Problem::warning(file, None, "", message)
        })
        .collect()
}

fn is_world_readable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & WORLD_READABLE != 0)
}

/// Every client TLS setting of a DestinationRule.
fn client_tls(rule: &Resource<DestinationRule>) -> Vec<&ClientTlsSettings> {
    let policies = rule
        .spec
        .traffic_policy
        .iter()
        .chain(rule.spec.subsets.iter().flatten().filter_map(|s| s.traffic_policy.as_ref()));
    policies.flat_map(|p| p.tls.iter().chain(p.port_level_settings.iter().filter_map(|l| l.tls.as_ref()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn warns_about_world_readable_keys_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let open_key = dir.path().join("open.key");
        let closed_key = dir.path().join("closed.key");
        for key in [&open_key, &closed_key] {
            std::fs::write(key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        }
        set_mode(&open_key, 0o644);
        set_mode(&closed_key, 0o600);
        std::fs::create_dir_all(dir.path().join("cred")).unwrap();
        let cred_key = dir.path().join("cred/tls.key");
        std::fs::write(&cred_key, "k").unwrap();
        set_mode(&cred_key, 0o604);
        let mesh_key = dir.path().join("key.pem");
        std::fs::write(&mesh_key, "k").unwrap();
        set_mode(&mesh_key, 0o644);
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: d\n  trafficPolicy:\n    tls: {{mode: MUTUAL, clientCertificate: /c.pem, privateKey: {closed}}}\n  subsets:\n  - name: v1\n    trafficPolicy:\n      tls: {{mode: MUTUAL, clientCertificate: /c.pem, privateKey: {open}}}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, credentialName: cred}}\n",
            closed = closed_key.display(),
            open = open_key.display(),
        );
        let mut config = Config { namespace: "default".into(), ..Config::default() };
        let mut problems = Vec::new();
        super::super::load::load_text(&yaml, &Arc::from(Path::new("t.yaml")), &mut config, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let dirs = KeyDirs { credentials: Some(dir.path().to_path_buf()), mesh_cert: Some(dir.path().to_path_buf()) };
        let warnings: Vec<String> = world_readable(&config, &dirs).iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        for key in [&open_key, &cred_key, &mesh_key] {
            let name = key.display().to_string();
            assert!(warnings.iter().any(|w| w.contains(&name) && w.contains("world-readable")), "{name}: {warnings:?}");
        }
        assert!(!warnings.iter().any(|w| w.contains("closed.key")), "{warnings:?}");
    }
}
