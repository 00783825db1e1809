//! The backends selected for one request: a `balance` decision, the membership snapshot it
//! was made on, and the candidates it yields in turn.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use http::header::HeaderValue;

use super::backend::Load;
use super::{BackendHandle, Membership, Settings, Upstream};
use crate::balance::{Availability, Decision};

/// See the module doc. Keep it for the whole request: the decision's indices refer to its
/// membership snapshot.
pub(crate) struct Selection {
    upstream: Arc<Upstream>,
    membership: Arc<Membership>,
    settings: Arc<Settings>,
    decision: Decision,
}

/// One backend to try, with its load reserved until the [`Load`] is dropped.
pub(crate) struct Candidate {
    index: usize,
    pub(crate) backend: Arc<BackendHandle>,
    pub(crate) load: Load,
}

impl Selection {
    pub(super) fn new(
        upstream: Arc<Upstream>,
        membership: Arc<Membership>,
        settings: Arc<Settings>,
        decision: Decision,
    ) -> Self {
        Self { upstream, membership, settings, decision }
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The next backend to try; the first is the primary. `None` when none is left.
    pub(crate) fn next(&mut self) -> Option<Candidate> {
        let (index, guard) = self.decision.next_candidate(&self.membership.set)?;
        let backend = self.membership.backends.get(index)?.clone();
        if backend.availability() == Availability::Draining {
            // Panic mode: a drain that found its backend idle must look again.
            backend.signal_activity();
        }
        Some(Candidate { index, load: Load::new(guard, backend.clone()), backend })
    }

    /// Count what the decision did, once a backend was chosen (or none could be).
    pub(crate) fn report(&self) {
        let skips = self.decision.bounded_skips();
        if skips > 0 {
            self.upstream.affinity.bounded_load_skip.inc_by(u64::from(skips));
        }
    }

    /// The `Set-Cookie` pinning the client to `served`, when one is due.
    pub(crate) fn pin(&self, served: &Candidate, is_tls: bool) -> Option<HeaderValue> {
        let cookie = self.decision.set_cookie(
            &self.settings.policy,
            &self.membership.set,
            served.index,
            SystemTime::now(),
            is_tls,
        )?;
        served.backend.count_pin();
        Some(cookie)
    }

    /// Our sticky cookie is ours: the backend never sees it.
    pub(crate) fn strip_cookie(&self, headers: &mut HeaderMap) {
        self.settings.policy.strip_cookie(headers);
    }

    /// The affinity key, for a tunnel to keep (rebalancing).
    pub(crate) fn shared_key(&self) -> Option<Arc<str>> {
        self.decision.shared_key()
    }
}
