//! The relay's biscuit tokens: access tokens (15 minutes, for `/api` and `/ws/client`) and
//! device tokens (long-lived, they only mark a browser that signed in before; see
//! `auth::throttle`). Both are signed by the root key and carry `user(id)`, `kind(..)`,
//! `expires(t)` and a check of that expiry; the root key id names the key that signed.
//!
//! The root private key lives in `auth.private_key_file`, generated with 0600 permissions
//! on first start. Verification needs only public keys: the root key's own, and those in
//! `auth.accepted_public_keys` (the next key before a rotation, the previous one after; the
//! README says how to rotate on one node and on several).
//!
//! Verification refuses, before checking any signature, a token longer than
//! [`MAX_TOKEN_BYTES`] or with more than [`MAX_TOKEN_BLOCKS`] blocks: a holder can append
//! blocks without a key, and each costs a signature check (6,000 blocks took ~410 ms per
//! `auth`). What is left is one signature and a four-rule policy, cheap enough for the
//! worker threads (`tests::verification_of_the_largest_accepted_token_is_cheap`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::AuthorizerBuilder;
use biscuit_auth::macros::{authorizer, biscuit};
use biscuit_auth::{error, AuthorizerLimits, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit};
use sha2::{Digest, Sha256};

/// The authorizer's time budget. biscuit's default (1 ms) fails spuriously on a busy
/// 2-core machine; our policy is tiny, so this only guards against a pathological token.
const AUTHORIZER_TIME_LIMIT: Duration = Duration::from_millis(50);

/// Longest token accepted, in base64 characters. The relay's own are ~300; a constant and
/// not a setting because only the relay issues tokens, so there is nothing to tune.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Most blocks accepted: the relay's tokens have only the authority block, and an appended
/// block would only cost a signature check.
pub const MAX_TOKEN_BLOCKS: usize = 1;

/// What a token is for; the authorizer requires the kind it expects, so one kind can never
/// stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Short-lived, presented on every API request and WebSocket `auth`.
    Access,
    /// Long-lived, presented only to `/auth/login`: this browser signed in before.
    Device,
}

impl TokenKind {
    /// The value of the token's `kind` fact.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Device => "device",
        }
    }
}

/// Why a token was refused. The variants are for logs; clients only learn "invalid".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`] or with more than [`MAX_TOKEN_BLOCKS`] blocks.
    #[error("token too large")]
    TooLarge,
    /// Not a biscuit, or signed by an unknown key, or tampered with.
    #[error("malformed or wrongly signed token")]
    Invalid,
    /// Expired, of another kind, without an expiry, or another check or policy failed.
    #[error("token expired or not authorised")]
    Refused,
}

/// Key file problems at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("key file {path} does not hold an ed25519 private key")]
    Malformed {
        /// The file.
        path: String,
    },
}

/// The id a public key is named by in tokens: the first four bytes of its SHA-256. Derived,
/// so every node computes the same id for the same key with nothing to configure.
pub fn key_id(key: &PublicKey) -> u32 {
    let digest = Sha256::digest(key.to_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Issues and verifies the relay's tokens.
pub struct AccessTokens {
    root: KeyPair,
    root_id: u32,
    /// Other keys whose tokens are accepted, by id.
    accepted: Vec<(u32, PublicKey)>,
    ttl: Duration,
    device_ttl: Duration,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("public_key", &self.root.public().to_string())
            .field("accepted", &self.accepted.len())
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// Tokens signed by `root`, access tokens valid for `ttl` (device tokens for 90 days
    /// until [`Self::with_device_ttl`]).
    pub fn new(root: KeyPair, ttl: Duration) -> Self {
        Self {
            root_id: key_id(&root.public()),
            root,
            accepted: Vec::new(),
            ttl,
            device_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }

    /// Also accepts tokens signed by `keys` (a rotation's other key).
    pub fn with_accepted_keys(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.accepted = keys.into_iter().map(|key| (key_id(&key), key)).collect();
        self
    }

    /// Device tokens valid for `ttl`.
    pub fn with_device_ttl(mut self, ttl: Duration) -> Self {
        self.device_ttl = ttl;
        self
    }

    /// Loads the root key from `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path, ttl: Duration) -> Result<Self, KeyFileError> {
        Ok(Self::new(load_or_create_key(path)?, ttl))
    }

    /// The root public key, as `ed25519/<hex>`.
    pub fn public_key(&self) -> String {
        self.root.public().to_string()
    }

    /// An access token for `user_id`, valid for the configured lifetime from now.
    pub fn issue(&self, user_id: &str) -> String {
        self.issue_expiring(user_id, SystemTime::now() + self.ttl)
    }

    /// An access token for `user_id` that expires at `expires` (tests make expired ones).
    pub fn issue_expiring(&self, user_id: &str, expires: SystemTime) -> String {
        self.mint(TokenKind::Access, user_id, expires)
    }

    /// A device token for `user_id`, valid for the configured device lifetime.
    pub fn issue_device(&self, user_id: &str) -> String {
        self.mint(
            TokenKind::Device,
            user_id,
            SystemTime::now() + self.device_ttl,
        )
    }

    fn mint(&self, kind: TokenKind, user_id: &str, expires: SystemTime) -> String {
        // unwrap: the datalog is fixed and its parameters are strings and a date, so
        // building and signing cannot fail.
        biscuit!(
            r#"user({user_id}); kind({kind}); expires({expires});
               check if time($time), $time <= {expires};"#,
            user_id = user_id,
            kind = kind.as_str(),
            expires = expires,
        )
        .root_key_id(self.root_id)
        .build(&self.root)
        .and_then(|token| token.to_base64())
        .unwrap()
    }

    /// The user id in a valid, unexpired access token signed by a key we accept.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_kind(token, TokenKind::Access)
    }

    /// The user id in a valid, unexpired device token.
    pub fn verify_device(&self, token: &str) -> Result<String, TokenError> {
        self.verify_kind(token, TokenKind::Device)
    }

    fn key_for(&self, id: Option<u32>) -> Result<PublicKey, error::Format> {
        match id {
            Some(id) if id == self.root_id => Ok(self.root.public()),
            Some(id) => self
                .accepted
                .iter()
                .find(|(accepted, _)| *accepted == id)
                .map(|(_, key)| *key)
                .ok_or(error::Format::UnknownPublicKey),
            // Every token the relay issues names its key.
            None => Err(error::Format::UnknownPublicKey),
        }
    }

    fn verify_kind(&self, token: &str, kind: TokenKind) -> Result<String, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let unverified = UnverifiedBiscuit::from_base64(token).map_err(|_| TokenError::Invalid)?;
        if unverified.block_count() > MAX_TOKEN_BLOCKS {
            return Err(TokenError::TooLarge);
        }
        let token = unverified
            .verify(|id| self.key_for(id))
            .map_err(|_| TokenError::Invalid)?;
        let mut authorizer = policy(kind)
            .time()
            .set_limits(AuthorizerLimits {
                max_time: AUTHORIZER_TIME_LIMIT,
                ..AuthorizerLimits::default()
            })
            .build(&token)
            .map_err(|_| TokenError::Invalid)?;
        authorizer.authorize().map_err(|_| TokenError::Refused)?;
        let users: Vec<(String,)> = authorizer
            .query("data($user) <- user($user)")
            .map_err(|_| TokenError::Refused)?;
        match users.as_slice() {
            [(user,)] => Ok(user.clone()),
            _ => Err(TokenError::Refused),
        }
    }
}

/// The authorizer's policy: the token is of `kind`, carries an expiry that has not passed
/// (a token without an `expires` fact fails this check, whatever checks it holds itself),
/// and names a user.
fn policy(kind: TokenKind) -> AuthorizerBuilder {
    authorizer!(
        r#"check if kind({kind});
           check if expires($expires), time($now), $now <= $expires;
           allow if user($user);"#,
        kind = kind.as_str(),
    )
}

/// Parses `ed25519/<hex>` public keys (`auth.accepted_public_keys`).
pub fn parse_public_key(text: &str) -> Option<PublicKey> {
    text.trim().parse().ok()
}

/// The public key of the key file at `path`, if it exists (for `check-config`).
pub fn public_key_of(path: &Path) -> Result<Option<String>, KeyFileError> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(read_key(path)?.public().to_string()))
}

fn read_key(path: &Path) -> Result<KeyPair, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let key: PrivateKey = text.trim().parse().map_err(|_| KeyFileError::Malformed {
        path: path.display().to_string(),
    })?;
    Ok(KeyPair::from(&key))
}

fn load_or_create_key(path: &Path) -> Result<KeyPair, KeyFileError> {
    if path.exists() {
        return read_key(path);
    }
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let key = KeyPair::new();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{}", key.private().to_prefixed_string()).map_err(io)?;
    tracing::info!(path = %path.display(), public_key = %key.public(), "generated a new biscuit root key");
    Ok(key)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
