//! `decrypt-read`: every WeChat source (encrypted databases, decrypted copies, other tools'
//! exports) in, one raw message table out.

pub mod raw;
pub mod sqlcipher;
