//! Configuration: Istio YAML files in, a validated [`Config`] out.
//!
//! - [`load`] finds files (a file, or the `*.yaml`/`*.yml` of a directory),
//!   splits multi-document YAML and `kind: List`, and deserializes the
//!   networking kinds into [`resources`] with namespaces defaulted.
//! - [`validate`] applies Istio's validation rules (spec §6) plus the
//!   cross-reference checks of `istioctl analyze` that matter to a proxy.
//! - [`watch`] turns file changes and SIGHUP into reload requests.
//! - [`limits`] bounds what one load reads (bytes, objects); [`keys`]
//!   warns about private key files anyone may read.
//!
//! A configuration is all or nothing: any error refuses the whole set and
//! the proxy keeps serving the last good one.

use std::path::PathBuf;

pub mod host;
pub mod keys;
pub mod limits;
pub mod load;
mod problem;
pub mod resources;
pub mod validate;
pub mod watch;
mod yaml;

pub use problem::{Problem, Severity};
use resources::{DestinationRule, Gateway, Resource, ServiceEntry, VirtualService, WorkloadEntry};

/// What to load: the `--config` paths and the proxy's namespace.
#[derive(Clone, Debug)]
pub struct Sources {
    pub paths: Vec<PathBuf>,
    /// Namespace for resources without `metadata.namespace`, and the
    /// namespace the proxy runs in (short-name aliases, exportTo).
    pub namespace: String,
}

/// Every networking resource of one load, in file order, namespaces
/// defaulted. Host names are kept as written; [`host::expand`] resolves them.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The proxy's own namespace.
    pub namespace: String,
    pub virtual_services: Vec<Resource<VirtualService>>,
    pub destination_rules: Vec<Resource<DestinationRule>>,
    pub service_entries: Vec<Resource<ServiceEntry>>,
    pub workload_entries: Vec<Resource<WorkloadEntry>>,
    pub gateways: Vec<Resource<Gateway>>,
    /// Hash of the bytes of every file read, in order: equal hashes mean an
    /// identical configuration, so a reload can skip the swap.
    pub content_hash: u64,
}

/// A refused configuration: every error found, and the warnings beside them.
#[derive(Debug, thiserror::Error)]
#[error("configuration refused: {} error(s)", .problems.iter().filter(|p| p.is_error()).count())]
pub struct Refused {
    pub problems: Vec<Problem>,
}

/// Loads and validates `sources`. On success returns the configuration and
/// its warnings; on any error returns every problem found.
pub fn load_and_validate(sources: &Sources) -> Result<(Config, Vec<Problem>), Refused> {
    let (config, problems) = load::load(sources);
    validate_loaded(config, problems)
}

/// Validates a configuration [`load::load`] returned, together with the
/// problems loading found.
pub fn validate_loaded(config: Config, mut problems: Vec<Problem>) -> Result<(Config, Vec<Problem>), Refused> {
    problems.extend(validate::validate(&config));
    if problems.iter().any(Problem::is_error) {
        return Err(Refused { problems });
    }
    Ok((config, problems))
}

impl Config {
    /// Number of resources of all kinds.
    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.gateways.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
