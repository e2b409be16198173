//! Accounts' security: password hashing, access tokens, opaque tokens, the request extractor.

pub mod extractor;
pub mod hashing;
pub mod opaque;
pub mod password;
pub mod throttle;
pub mod token;
