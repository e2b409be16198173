//! Opaque random tokens (refresh and machine tokens): shown once, stored as SHA-256.
//!
//! 32 random bytes carry 256 bits of entropy, so a fast hash is enough: there is nothing
//! to brute-force. Lookups are by the hash, through a unique index, so presenting a token
//! never scans or compares against other users' tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of machine tokens (PROTOCOL.md §2).
pub const MACHINE_PREFIX: &str = "hmt_";
/// Prefix of refresh tokens: lets secret scanners recognise a leaked one.
pub const REFRESH_PREFIX: &str = "hrt_";

/// A freshly minted token: the secret to show once, and the hash to store.
pub struct Minted {
    /// `prefix` + 32 random bytes, base64url.
    pub secret: String,
    /// SHA-256 of `secret`, hex.
    pub hash: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Mints a token with `prefix` from the OS CSPRNG.
pub fn mint(prefix: &str) -> Minted {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash(&secret);
    Minted { secret, hash }
}

/// SHA-256 of a token, hex.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two hashes in constant time (after the indexed lookup, as defence in depth).
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_tokens_are_hmt_and_43_base64url_characters() {
        let minted = mint(MACHINE_PREFIX);
        let body = minted.secret.strip_prefix("hmt_").unwrap();
        assert_eq!(body.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_eq!(hash(&minted.secret), minted.hash);
        assert_ne!(mint(MACHINE_PREFIX).secret, minted.secret);
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let minted = mint(REFRESH_PREFIX);
        assert!(!format!("{minted:?}").contains(&minted.secret));
    }

    #[test]
    fn hashes_match_only_when_equal() {
        assert!(hashes_match("abc", "abc"));
        assert!(!hashes_match("abc", "abd"));
        assert!(!hashes_match("abc", "ab"));
    }
}
