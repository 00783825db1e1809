//! Live reload: re-read the config file and put it in place as a whole, or keep the running
//! one. Everything that can fail (parsing, binding new listeners, reading certificates) happens
//! before anything changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Server, bind_listener, tls_settings};
use crate::admin::Reloader;
use crate::config::{self, ReloadError};
use crate::metrics::ResultLabels;

impl Server {
    /// Re-read the config file and apply it, or keep the running config if it is invalid.
    pub(super) async fn reload_now(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let metrics = self.proxy.metrics().clone();
        let result = self.try_reload().await;
        match &result {
            Ok(generation) => {
                metrics.reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
                tracing::info!(generation, "configuration reloaded");
            }
            Err(problems) => {
                metrics.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
                tracing::error!(errors = %crate::report::Chain(problems), "configuration reload rejected; the running configuration stays");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<u64, ReloadError> {
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(ReloadError::Task)?
            .map_err(ReloadError::Invalid)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let config = loaded.config;
        let mut fresh = Vec::new();
        let mut tls_updates = Vec::new();
        {
            let current = self.listeners.lock();
            for wanted in &config.listeners {
                match current.iter().find(|b| b.name == wanted.name && b.bind == wanted.bind) {
                    Some(existing) => {
                        let tls = match &wanted.tls {
                            Some(tls) => Some(tls_settings(&wanted.name, tls)?),
                            None => None,
                        };
                        if tls.is_some() != existing.state.tls.is_some() {
                            return Err(ReloadError::TlsToggle(wanted.name.clone()));
                        }
                        tls_updates.push((existing.state.clone(), tls));
                    }
                    None => fresh.push(bind_listener(wanted, self.proxy.metrics())?),
                }
            }
        }
        let running = self.proxy.config();
        if config.admin.as_ref().map(|a| a.bind) != running.admin.as_ref().map(|a| a.bind) {
            tracing::warn!("admin.bind changed: it takes effect at the next restart");
        }
        if config.limits.max_connections != running.limits.max_connections {
            tracing::warn!("limits.max_connections changed: it takes effect at the next restart");
        }
        if config.runtime != running.runtime {
            tracing::warn!("runtime.workers changed: it takes effect at the next restart");
        }
        if config.limits.max_in_flight != running.limits.max_in_flight {
            tracing::warn!("limits.max_in_flight changed: it takes effect at the next restart");
        }
        for (state, tls) in tls_updates {
            if let (Some(slot), Some(tls)) = (&state.tls, tls) {
                slot.store(Arc::new(tls));
            }
        }
        {
            let mut current = self.listeners.lock();
            current.retain(|b| {
                let keep = config.listeners.iter().any(|w| w.name == b.name && w.bind == b.bind);
                if !keep {
                    // Stop accepting; connections already open carry on.
                    tracing::info!(listener = %b.name, addr = %b.addr, "listener removed");
                    b.stop.cancel();
                }
                keep
            });
            for (listener, b) in fresh {
                tracing::info!(listener = %b.name, addr = %b.addr, "listener added");
                crate::accept::announce(&b.name, b.addr);
                self.spawn_accept(listener, &b);
                current.push(b);
            }
        }
        Ok(self.proxy.apply(Arc::new(config)))
    }
}

impl Reloader for Server {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<u64, ReloadError>> + Send + '_>> {
        Box::pin(self.reload_now())
    }
}
