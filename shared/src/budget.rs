//! The limits a provider endpoint declares (requests and tokens per minute, calls at once):
//! what the workers' admission control shares among themselves, so that the service's own
//! traffic never draws a 429 from the provider. The registry file sets them per endpoint; an
//! unset limit is not enforced.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimits {
    /// Calls started per minute, across every worker.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + the output the call may produce) per minute, across every worker.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Calls in flight at once, across every worker.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

impl EndpointLimits {
    /// True when no limit is set: calls need no admission.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.max_concurrency.is_none()
    }
}
