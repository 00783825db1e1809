//! WebSocket tunnels: upgraded connections relayed byte for byte between a client and a backend.
//!
//! Owns: everything that happens to a connection after the `101 Switching Protocols`: the relay,
//! the per-backend registry through which drains ask tunnels to close, and finding frame
//! boundaries so a draining tunnel can be ended with a clean Close. Must not: pick backends
//! (that is `balance`), decide when a tunnel is closed (that is `lifecycle`), or parse, copy or
//! alter the payload it relays.

pub mod frames;
pub mod registry;
pub mod relay;
