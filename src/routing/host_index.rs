//! Domain → virtual host index. (To be implemented.)

/// Finds a virtual host by Host header.
#[derive(Debug, Default)]
pub struct HostIndex {}

impl HostIndex {
    /// Index of the virtual host for `authority` (port ignored, trailing dot
    /// ignored, case-insensitive): exact, then longest `*.suffix`, then `*`.
    pub fn lookup(&self, authority: &str) -> Option<usize> {
        let _ = authority;
        None
    }
}
