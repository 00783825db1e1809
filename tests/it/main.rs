//! tether's integration tests: one binary, one module per area.

mod support;

mod affinity;
mod backend_fanout;
mod backend_heartbeat;
mod backend_interop;
mod backend_protocol;
mod backend_redis_outage;
mod backend_shutdown;
mod backend_slow_consumer;
mod backend_user;
mod config_check;
mod demo;
mod deploy_compose;
mod deploy_files;
mod deploy_k8s;
mod drain;
mod ops_admin;
mod ops_discovery;
mod ops_metrics;
mod ops_reload;
mod ops_status_page;
mod ops_watch;
mod proxy_core;
mod tunnel_close;
