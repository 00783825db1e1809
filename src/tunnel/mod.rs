//! WebSocket tunnels: relaying upgraded connections and keeping track of the open ones.
//!
//! Owns: the byte relay between a client and a backend after a `101`, and the per-backend
//! registry through which drains ask tunnels to close. Must not: route or parse HTTP.

pub mod registry;
pub mod relay;
