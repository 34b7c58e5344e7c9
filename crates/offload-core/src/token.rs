//! Join tokens: `ofl1.<CA SHA-256 hex>.<secret hex>`, printed by
//! `offload admin token create` and read by `offload join`.

/// Prefix and version of the join token format.
const JOIN_PREFIX: &str = "ofl1";

/// A parsed join token: `ofl1.<CA SHA-256 hex>.<secret hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub secret: String,
}

/// Why a join token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed join token: expected ofl1.<64 hex CA fingerprint>.<64 hex secret>, as printed by `offload admin token create`"
)]
pub struct MalformedToken;

impl JoinToken {
    pub fn parse(value: &str) -> Result<Self, MalformedToken> {
        let mut parts = value.trim().split('.');
        let (Some(JOIN_PREFIX), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        if !is_hex(fp, 64) || !is_hex(secret, 64) {
            return Err(MalformedToken);
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{JOIN_PREFIX}.{}.{}", self.ca_fingerprint, self.secret)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
