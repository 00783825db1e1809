//! tether's integration tests: one binary, one module per area.

mod support;

mod backend_fanout;
mod backend_heartbeat;
mod backend_interop;
mod backend_protocol;
mod backend_redis_outage;
mod backend_shutdown;
mod backend_slow_consumer;
mod backend_user;
mod config_check;
mod drain;
mod proxy_core;
mod tunnel_close;
