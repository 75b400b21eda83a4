//! Config → routing table + cluster specs. (To be implemented.)

use super::{Compiled, RouteTable};
use crate::config::Config;

/// Compiles a validated configuration.
pub fn compile(config: &Config) -> Compiled {
    let _ = config;
    Compiled { table: RouteTable::default(), clusters: Vec::new(), warnings: Vec::new() }
}
