//! tether's integration tests: one binary, one module per area.

mod support;

mod config_check;
mod proxy_core;
mod tunnel_close;
