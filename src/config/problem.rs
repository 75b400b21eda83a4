//! A configuration problem: what is wrong, where, and how bad.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::resources::ResourceId;

/// Errors refuse the whole configuration; warnings are reported and the
/// configuration is still applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One line of `meshd validate` output:
/// `file: Kind namespace/name: field.path: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The file the problem was found in (absent for problems with the
    /// command line itself, such as a missing path).
    pub file: Option<Arc<Path>>,
    /// The resource, when the problem is inside one.
    pub resource: Option<ResourceId>,
    /// Dotted field path inside the resource, e.g. `spec.http[0].route[1].weight`.
    pub field: String,
    pub message: String,
}

// === impl Problem ===

impl Problem {
    pub fn error(
        file: Option<Arc<Path>>,
        resource: Option<ResourceId>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem { severity: Severity::Error, file, resource, field: field.into(), message: message.into() }
    }

    pub fn warning(
        file: Option<Arc<Path>>,
        resource: Option<ResourceId>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem { severity: Severity::Warning, file, resource, field: field.into(), message: message.into() }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}
