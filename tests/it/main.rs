//! tether's integration tests: one binary, one module per area.

mod support;

mod affinity;
mod app_broker;
mod app_cluster;
mod app_demo_page;
mod app_fanout;
mod app_heartbeat;
mod app_integration;
mod app_interop;
mod app_protocol;
mod app_redis_outage;
mod app_resume;
mod app_shutdown;
mod app_slow_consumer;
mod app_sockjs;
mod app_trust;
mod app_user;
mod config_check;
mod demo;
mod deploy_compose;
mod deploy_files;
mod deploy_k8s;
mod drain;
mod hostile;
mod ops_admin;
mod ops_discovery;
mod ops_metrics;
mod ops_reload;
mod ops_runtime;
mod ops_status_page;
mod ops_watch;
mod proxy_core;
mod rolling_resume;
mod trust;
mod tunnel_close;
