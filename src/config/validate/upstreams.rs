//! Upstreams: backends, discovery, health checks, passive ejection, drain and rebalance.

use std::time::Duration;

use std::collections::HashMap;

use crate::config::file::{
    FileBackend, FileConfig, FileDrain, FileHealthCheck, FilePassive, FileRebalance, FileUpstream,
};
use crate::config::units::format_duration;
use crate::config::values::{invalid_name_message, is_valid_name};
use crate::config::{
    BackendConfig, DiscoveryConfig, DrainConfig, HealthCheckConfig, PassiveConfig, RebalanceConfig, UpstreamConfig,
};

use super::{Checked, Validator};

pub(super) const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds the ring a single backend can claim (weight x vnodes points): a typo such as
/// `weight: 100000` must not turn into gigabytes at startup.
pub(super) const MAX_WEIGHT: u32 = 1000;
pub(super) const DEFAULT_HEALTH_PATH: &str = "/readyz";
pub(super) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_HEALTHY_AFTER: u32 = 2;
pub(super) const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub(super) const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub(super) const DEFAULT_EJECTION: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Inside Kubernetes' default 30 s termination grace period, with room to exit.
pub(super) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Spreading closes keeps every client of a draining backend from reconnecting at once.
pub(super) const DEFAULT_CLOSE_SPREAD: Duration = Duration::from_secs(5);
/// 1001 "going away"; 1012 "service restart" is the other sensible choice.
pub(super) const DEFAULT_CLOSE_CODE: u16 = 1001;
pub(super) const DEFAULT_MAX_CLOSES_PER_SECOND: u32 = 50;

impl Validator<'_> {
    pub(super) fn upstreams(&mut self, file: &FileConfig) -> Checked<Vec<UpstreamConfig>> {
        if file.upstreams.0.is_empty() {
            return Err(self.error("upstreams", "at least one upstream is required"));
        }
        let mut out = Ok(Vec::with_capacity(file.upstreams.0.len()));
        for (name, upstream) in &file.upstreams.0 {
            let checked = self.upstream(name, upstream);
            match (checked, &mut out) {
                (Ok(u), Ok(all)) => all.push(u),
                (Err(r), _) => out = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    pub(super) fn upstream(&mut self, name: &str, upstream: &FileUpstream) -> Checked<UpstreamConfig> {
        let path = format!("upstreams.{name}");
        let checked_name = if is_valid_name(name) {
            Ok(name.to_owned())
        } else {
            let at = self.index.key(&path);
            Err(self.error_at(&path, at, invalid_name_message("upstream name", name)))
        };
        let discovery = upstream
            .discovery
            .as_ref()
            .map(|d| {
                let dns = self.backend_address(&format!("{path}.discovery.dns"), &d.dns);
                let interval = self.positive_duration(
                    &format!("{path}.discovery.interval"),
                    d.interval.as_ref(),
                    DEFAULT_DISCOVERY_INTERVAL,
                );
                Ok(DiscoveryConfig { dns: dns?, interval: interval? })
            })
            .transpose();
        let backends = self.backends(&path, upstream.backends.as_deref(), upstream.discovery.is_some());
        let affinity = self.affinity(&format!("{path}.affinity"), upstream.affinity.as_ref());
        let health_check =
            upstream.health_check.as_ref().map(|h| self.health_check(&format!("{path}.health_check"), h)).transpose();
        let passive = self.passive(&format!("{path}.passive"), upstream.passive.as_ref());
        let drain = self.drain(&format!("{path}.drain"), upstream.drain.as_ref());
        let rebalance = self.rebalance(&format!("{path}.rebalance"), upstream.rebalance.as_ref());
        Ok(UpstreamConfig {
            name: checked_name?,
            backends: backends?,
            discovery: discovery?,
            affinity: affinity?,
            health_check: health_check?,
            passive: passive?,
            drain: drain?,
            rebalance: rebalance?,
        })
    }

    pub(super) fn backends(
        &mut self,
        upstream: &str,
        backends: Option<&[FileBackend]>,
        has_discovery: bool,
    ) -> Checked<Vec<BackendConfig>> {
        let path = format!("{upstream}.backends");
        let backends = backends.unwrap_or_default();
        if backends.is_empty() && !has_discovery {
            return Err(self.error(&path, "at least one backend is required unless discovery is set"));
        }
        let mut out = Ok(Vec::with_capacity(backends.len()));
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, backend) in backends.iter().enumerate() {
            let item = format!("{path}[{i}]");
            let id = self.name(&format!("{item}.id"), &backend.id, "backend id");
            let id =
                id.and_then(|id| match ids.insert(backend.id.as_str(), i) {
                    Some(first) => Err(self
                        .error(&format!("{item}.id"), format!("duplicate backend id {id:?} (also {path}[{first}])"))),
                    None => Ok(id),
                });
            let address = self.backend_address(&format!("{item}.address"), &backend.address);
            let weight = match backend.weight {
                None => Ok(1),
                Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
                Some(w) => Err(self
                    .error(&format!("{item}.weight"), format!("weight must be between 1 and {MAX_WEIGHT}, got {w}"))),
            };
            match (id, address, weight, &mut out) {
                (Ok(id), Ok(address), Ok(weight), Ok(out)) => out.push(BackendConfig { id, address, weight }),
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) => out = Err(r),
                (_, _, _, Err(_)) => {}
            }
        }
        out
    }

    pub(super) fn health_check(&mut self, path: &str, h: &FileHealthCheck) -> Checked<HealthCheckConfig> {
        let check_path = match &h.path {
            None => Ok(DEFAULT_HEALTH_PATH.to_owned()),
            Some(p) => self.url_path(&format!("{path}.path"), p),
        };
        let interval =
            self.positive_duration(&format!("{path}.interval"), h.interval.as_ref(), DEFAULT_HEALTH_INTERVAL);
        let timeout = self.positive_duration(&format!("{path}.timeout"), h.timeout.as_ref(), DEFAULT_HEALTH_TIMEOUT);
        let timeout = match (timeout, interval) {
            (Ok(t), Ok(i)) if t >= i => Err(self.error(
                &format!("{path}.timeout"),
                format!("timeout ({}) must be shorter than interval ({})", format_duration(t), format_duration(i)),
            )),
            (t, _) => t,
        };
        let healthy_after = self.at_least_one(&format!("{path}.healthy_after"), h.healthy_after, DEFAULT_HEALTHY_AFTER);
        let unhealthy_after =
            self.at_least_one(&format!("{path}.unhealthy_after"), h.unhealthy_after, DEFAULT_UNHEALTHY_AFTER);
        Ok(HealthCheckConfig {
            path: check_path?,
            interval: interval?,
            timeout: timeout?,
            healthy_after: healthy_after?,
            unhealthy_after: unhealthy_after?,
        })
    }

    pub(super) fn passive(&mut self, path: &str, p: Option<&FilePassive>) -> Checked<PassiveConfig> {
        let consecutive_failures = self.at_least_one(
            &format!("{path}.consecutive_failures"),
            p.and_then(|p| p.consecutive_failures),
            DEFAULT_CONSECUTIVE_FAILURES,
        );
        let ejection =
            self.positive_duration(&format!("{path}.ejection"), p.and_then(|p| p.ejection.as_ref()), DEFAULT_EJECTION);
        let max_ejection = self.positive_duration(
            &format!("{path}.max_ejection"),
            p.and_then(|p| p.max_ejection.as_ref()),
            DEFAULT_MAX_EJECTION,
        );
        let max_ejection = match (max_ejection, ejection) {
            (Ok(max), Ok(min)) if max < min => Err(self.error(
                &format!("{path}.max_ejection"),
                format!(
                    "max_ejection ({}) must not be shorter than ejection ({})",
                    format_duration(max),
                    format_duration(min)
                ),
            )),
            (max, _) => max,
        };
        Ok(PassiveConfig {
            consecutive_failures: consecutive_failures?,
            ejection: ejection?,
            max_ejection: max_ejection?,
        })
    }

    pub(super) fn drain(&mut self, path: &str, d: Option<&FileDrain>) -> Checked<DrainConfig> {
        let timeout =
            self.duration(&format!("{path}.timeout"), d.and_then(|d| d.timeout.as_ref()), DEFAULT_DRAIN_TIMEOUT);
        let close_spread = self.duration(
            &format!("{path}.close_spread"),
            d.and_then(|d| d.close_spread.as_ref()),
            DEFAULT_CLOSE_SPREAD,
        );
        let close_spread = match (close_spread, timeout) {
            (Ok(spread), Ok(timeout)) if spread > timeout => Err(self.error(
                &format!("{path}.close_spread"),
                format!(
                    "close_spread ({}) must not be longer than timeout ({})",
                    format_duration(spread),
                    format_duration(timeout)
                ),
            )),
            (spread, _) => spread,
        };
        let close_code = match d.and_then(|d| d.close_code) {
            None => Ok(DEFAULT_CLOSE_CODE),
            Some(code @ (1001 | 1012)) => Ok(code),
            Some(code) => Err(self.error(
                &format!("{path}.close_code"),
                format!("close_code must be 1001 (going away) or 1012 (service restart), got {code}"),
            )),
        };
        Ok(DrainConfig { timeout: timeout?, close_spread: close_spread?, close_code: close_code? })
    }

    pub(super) fn rebalance(&mut self, path: &str, r: Option<&FileRebalance>) -> Checked<RebalanceConfig> {
        let max_closes_per_second = self.at_least_one(
            &format!("{path}.max_closes_per_second"),
            r.and_then(|r| r.max_closes_per_second),
            DEFAULT_MAX_CLOSES_PER_SECOND,
        );
        Ok(RebalanceConfig {
            enabled: r.and_then(|r| r.enabled).unwrap_or(false),
            max_closes_per_second: max_closes_per_second?,
        })
    }
}
