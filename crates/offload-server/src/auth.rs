//! Tokens: join tokens that pin the CA, API tokens, and how they are stored (hashed).

use rand::Rng;

pub use offload_core::token::{JoinToken, MalformedToken};

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
