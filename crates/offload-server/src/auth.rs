//! Tokens: join tokens that pin the CA, API tokens, and how they are stored (hashed).

use rand::Rng;

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

/// 256 random bits as lowercase hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the store keeps instead of a token. Tokens carry 256 random bits, so a fast hash
/// is enough: there is nothing to brute-force.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let token = JoinToken {
            ca_fingerprint: "ab".repeat(32),
            secret: random_secret(),
        };
        assert_eq!(JoinToken::parse(&token.to_string()), Ok(token.clone()));
        for bad in [
            "",
            "ofl1..",
            "ofl2.aa.bb",
            &format!("ofl1.{}.{}", "AB".repeat(32), token.secret),
            &format!("{}.extra", token),
        ] {
            assert_eq!(JoinToken::parse(bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn secrets_are_random_and_hashes_stable() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(token_hash("x"), token_hash("x"));
        assert_ne!(token_hash("x"), token_hash("y"));
    }
}
