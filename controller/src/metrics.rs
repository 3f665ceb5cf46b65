//! Prometheus metrics and the health endpoints (`--metrics-bind-address`): `/metrics` (text
//! exposition), `/healthz` (the process serves), `/readyz` (every watch cache has completed its
//! first list; leader and standby alike, since both serve the webhook; the body says which).
//!
//! Label sets are bounded: request metrics carry only the request's namespace and name (and
//! disappear with the request), failures only [`crate::error::Error::reason`]'s static labels,
//! phases only [`Phase`]'s variants.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{Phase, PlanStepKind, StepState, UpgradeRequestStatus};
use crate::leader::Leadership;
use crate::observe::Caches;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<RequestLabels, Counter>,
    reconcile_duration: Histogram,
    failures: Family<ReasonLabels, Counter>,
    step_duration: Family<KindLabels, Histogram>,
    writes: Family<KindLabels, Counter>,
    // Refreshed from the caches on each scrape.
    requests: Family<PhaseLabels, Gauge>,
    request_step: Family<RequestLabels, Gauge>,
    cached: Family<KindLabels, Gauge>,
    leader: Gauge,
    /// With `--shard-selector`: only the requests of the shard's Clusters have series (the
    /// other shards report theirs).
    sharded: bool,
    /// Requests with a per-request series (pruned when the request is gone).
    known: Mutex<HashSet<RequestLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("upgrade_controller");
        let reconciles = Family::<RequestLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of each UpgradeRequest",
            reconciles.clone(),
        );
        // 1 ms to about 65 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile (observe, decide, at most one write, status)",
            reconcile_duration.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles by reason (Forbidden, APIUnavailable, InternalError, ...)",
            failures.clone(),
        );
        // 10 s to about 45 h.
        let step_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(10.0, 2.0, 15))
        });
        registry.register(
            "step_duration_seconds",
            "Duration of finished plan steps (kind ControlPlane or Workers), start to rollout complete",
            step_duration.clone(),
        );
        let writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "writes",
            "Writes to the cluster: ClusterVersionShadow (Phase 1) and step starts",
            writes.clone(),
        );
        let requests = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "requests",
            "UpgradeRequests by status.phase (None: not reconciled yet)",
            requests.clone(),
        );
        let request_step = Family::<RequestLabels, Gauge>::default();
        registry.register(
            "request_step",
            "The plan step each UpgradeRequest is at (1-based; 0 before the first, steps+1 when done)",
            request_step.clone(),
        );
        let cached = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cached_objects",
            "Objects held in the watch caches, by kind",
            cached.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without election), 0 as a standby",
            leader.clone(),
        );
        Self {
            registry,
            leader,
            sharded: false,
            reconciles,
            reconcile_duration,
            failures,
            step_duration,
            writes,
            requests,
            request_step,
            cached,
            known: Mutex::default(),
        }
    }

    /// One reconcile of `namespace/name` took `took`; `failure` is its error's reason.
    pub fn reconciled(&self, namespace: &str, name: &str, took: Duration, failure: Option<&str>) {
        let labels = RequestLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(labels);
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        }
    }

    /// A write to the cluster succeeded (`kind`: `ClusterVersionShadow`, `ControlPlane`,
    /// `Workers`).
    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The steps that finished between `before` and `after`, by their recorded times.
    pub fn steps_finished(&self, before: &UpgradeRequestStatus, after: &UpgradeRequestStatus) {
        for step in &after.plan {
            let was = before
                .plan
                .iter()
                .find(|b| b.index == step.index)
                .map(|b| b.state);
            if step.state != StepState::Succeeded || was == Some(StepState::Succeeded) {
                continue;
            }
            let (Some(start), Some(end)) = (&step.started_at, &step.finished_at) else {
                continue;
            };
            let secs = end.0.duration_since(start.0).as_secs_f64();
            if secs >= 0.0 {
                let kind = match step.kind {
                    PlanStepKind::KubeOvn => "KubeOvn",
                    PlanStepKind::ControlPlane => "ControlPlane",
                    PlanStepKind::Workers => "Workers",
                };
                self.step_duration
                    .get_or_create(&KindLabels { kind: kind.into() })
                    .observe(secs);
            }
        }
    }

    /// Metrics of one shard (`--shard-selector`): requests of Clusters outside the shard are
    /// left to the shard that handles them.
    pub fn sharded() -> Self {
        Self {
            sharded: true,
            ..Self::new()
        }
    }

    /// Sets the gauges from the caches and drops the series of requests that are gone.
    fn refresh(&self, caches: &Caches) {
        self.requests.clear();
        self.request_step.clear();
        for phase in PHASES {
            self.requests
                .get_or_create(&PhaseLabels {
                    phase: phase.into(),
                })
                .set(0);
        }
        let mut present = HashSet::new();
        for ur in caches.requests.all() {
            if self.sharded
                && caches
                    .clusters
                    .get(
                        ur.metadata.namespace.as_deref().unwrap_or_default(),
                        &ur.spec.cluster_name,
                    )
                    .is_none()
            {
                continue;
            }
            let status = ur.status.clone().unwrap_or_default();
            let phase = status
                .phase
                .map_or("None".to_string(), |p| format!("{p:?}"));
            self.requests.get_or_create(&PhaseLabels { phase }).inc();
            let labels = RequestLabels {
                namespace: ur.metadata.namespace.clone().unwrap_or_default(),
                name: ur.metadata.name.clone().unwrap_or_default(),
            };
            self.request_step
                .get_or_create(&labels)
                .set(current_step(&status));
            present.insert(labels);
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|labels| {
            let keep = present.contains(labels);
            if !keep {
                self.reconciles.remove(labels);
            }
            keep
        });
        for (kind, n) in caches.sizes() {
            self.cached
                .get_or_create(&KindLabels { kind: kind.into() })
                .set(n as i64);
        }
    }

    /// The text exposition, after a refresh from `caches` and the role.
    pub fn render(&self, caches: &Caches, leader: bool) -> String {
        self.refresh(caches);
        self.leader.set(i64::from(leader));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

const PHASES: [&str; 9] = [
    "None",
    "Pending",
    "Preflight",
    "AwaitingAcknowledgement",
    "UpgradingExtensions",
    "Upgrading",
    "Paused",
    "Stalled",
    "Succeeded",
];

/// 1-based index of the first unfinished step; 0 before a plan, steps + 1 when all finished.
fn current_step(status: &UpgradeRequestStatus) -> i64 {
    if status.plan.is_empty() {
        return if status.phase == Some(Phase::Succeeded) {
            1
        } else {
            0
        };
    }
    status
        .plan
        .iter()
        .position(|s| s.state != StepState::Succeeded)
        .map_or(status.plan.len() as i64 + 1, |i| i as i64 + 1)
}

#[derive(Clone)]
struct Served {
    metrics: Arc<Metrics>,
    caches: Caches,
    leadership: Leadership,
}

async fn exposition(State(s): State<Served>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(&s.caches, s.leadership.is_leader()),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Served>) -> (StatusCode, String) {
    if s.caches.synced() {
        (StatusCode::OK, format!("ok: {}", s.leadership.describe()))
    } else {
        let failing: Vec<String> = s.caches.failing().into_iter().map(|f| f.message).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("watch caches not synced yet {failing:?}"),
        )
    }
}

/// Binds `addr` (before the controller starts, so a taken port fails the start) and returns
/// the bound address and the server to run.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    caches: Caches,
    leadership: Leadership,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-bind-address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(exposition))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Served {
            metrics: metrics.clone(),
            caches,
            leadership,
        });
    Ok((bound, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_reconcile_histogram_and_prunes_gone_requests() {
        let m = Metrics::new();
        let caches = Caches::new();
        m.reconciled("ns", "a", Duration::from_millis(3), None);
        m.reconciled("ns", "a", Duration::from_millis(5), Some("Forbidden"));
        let before_refresh = {
            let mut out = String::new();
            encode(&mut out, &m.registry).unwrap();
            out
        };
        assert!(
            before_refresh
                .contains("upgrade_controller_reconciles_total{namespace=\"ns\",name=\"a\"} 2"),
            "{before_refresh}"
        );
        let text = m.render(&caches, true);
        assert!(text.contains("upgrade_controller_leader 1"), "{text}");
        assert!(text.contains("upgrade_controller_reconcile_duration_seconds_count 2"));
        assert!(
            text.contains("upgrade_controller_reconcile_failures_total{reason=\"Forbidden\"} 1")
        );
        assert!(text.contains("upgrade_controller_requests{phase=\"Stalled\"} 0"));
        // The request is not in the (empty) cache: its series is gone.
        assert!(!text.contains("name=\"a\""), "{text}");
    }
}
