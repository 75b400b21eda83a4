//! Compiled HTTPMatchRequest. (To be implemented.)

use super::RequestView;

/// All conditions of one Istio HTTPMatchRequest, compiled.
#[derive(Debug)]
pub struct RequestMatch {}

impl RequestMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let _ = req;
        true
    }
}
