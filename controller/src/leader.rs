//! Leader election: which of the controller's replicas reconciles.
//!
//! Every replica watches (its caches stay warm and its webhook answers from them), but only
//! the holder of a `coordination.k8s.io/v1` Lease reconciles and so writes. The Lease is held
//! with `kube-lease-manager` (server-side apply of the Lease, renewed `renew_before` ahead of
//! its expiry; another replica takes it only once it has expired). With `--shard-selector`
//! each shard has its own Lease, so each shard has its own leader.
//!
//! A leader that cannot renew in time, or finds the Lease taken, does not go on: [`Leadership::lost`]
//! resolves and the process exits (as controller-runtime's managers do), since a reconcile
//! already under way cannot be un-sent. The pod's restart brings it back as a standby.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// The `--leader-election-*` flags.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Name of the Lease (one per shard).
    pub name: String,
    pub namespace: String,
    /// This replica's identity in `spec.holderIdentity` (the pod name).
    pub identity: String,
    /// How long the Lease is valid after its last renewal: the longest a standby waits after
    /// the leader died.
    pub duration: Duration,
    /// How long before expiry the leader renews; also the longest it keeps trying when a
    /// renewal fails, before it gives up the lead.
    pub renew_before: Duration,
}

impl LeaseOptions {
    /// Refuses what the lease manager cannot work with (it would panic).
    pub fn validate(&self) -> Result<(), String> {
        let (d, g) = (self.duration.as_secs(), self.renew_before.as_secs());
        if d < 2 || g == 0 || g >= d {
            return Err(format!(
                "--leader-election-lease-duration ({d}s) must be at least 2s and longer than --leader-election-renew-before ({g}s, at least 1s)"
            ));
        }
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return Err(
                "the Lease needs a name, a namespace and an identity (--leader-election-lease, --leader-election-namespace, POD_NAME)"
                    .into(),
            );
        }
        Ok(())
    }

    /// `namespace/name`, for logs and `/readyz`.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What this replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the Lease (or running without election: never).
    Standby,
    Leader,
    /// Was leader and is no longer: it must stop before anything else is written.
    Lost,
}

/// This replica's role as it changes, shared by the driver, `/readyz` and `/metrics`.
#[derive(Clone)]
pub struct Leadership {
    role: watch::Receiver<Role>,
    /// `namespace/name` of the Lease; `None` without election.
    lease: Option<String>,
    /// Stops the election task (dropping the last clone does).
    elector: Option<Arc<Elector>>,
}

struct Elector {
    manager: Arc<LeaseManager>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leadership {
    /// No election: this process leads from the start (a single replica, tests, `--leader-elect`
    /// off).
    pub fn sole() -> Self {
        let (tx, role) = watch::channel(Role::Leader);
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        Self {
            role,
            lease: None,
            elector: None,
        }
    }

    /// Takes part in the election on `opts`' Lease (creating it when absent) and returns at
    /// once, as a standby; the role changes as the Lease is won or lost.
    pub async fn elect(client: Client, opts: &LeaseOptions) -> anyhow::Result<Self> {
        opts.validate().map_err(anyhow::Error::msg)?;
        let manager = LeaseManagerBuilder::new(client, &opts.name)
            .with_namespace(&opts.namespace)
            .with_identity(&opts.identity)
            .with_duration(opts.duration.as_secs())
            .with_grace(opts.renew_before.as_secs())
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("leader election on Lease {}: {e}", opts.lease()))?;
        let manager = Arc::new(manager);
        let (tx, role) = watch::channel(Role::Standby);
        let task = tokio::spawn(campaign(manager.clone(), tx, opts.clone()));
        info!(lease = %opts.lease(), identity = %opts.identity, "standing for leader");
        Ok(Self {
            role,
            lease: Some(opts.lease()),
            elector: Some(Arc::new(Elector { manager, task })),
        })
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    pub fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }

    /// For `/readyz`: what this replica is, and on which Lease.
    pub fn describe(&self) -> String {
        match (&self.lease, self.role()) {
            (None, _) => "leader (no election)".into(),
            (Some(l), Role::Leader) => format!("leader (holds Lease {l})"),
            (Some(l), Role::Standby) => format!("standby (waiting for Lease {l})"),
            (Some(l), Role::Lost) => format!("lost Lease {l}; stopping"),
        }
    }

    /// One item each time this replica becomes leader (and at once if it already is): the
    /// driver then reconciles every request, since a standby let their events pass.
    pub fn acquired(&self) -> impl Stream<Item = ()> + Send + Sync + 'static {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut role = self.role.clone();
        tokio::spawn(async move {
            let mut was = Role::Standby;
            loop {
                let now = *role.borrow_and_update();
                if now == Role::Leader && was != Role::Leader && tx.unbounded_send(()).is_err() {
                    return;
                }
                was = now;
                if role.changed().await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Resolves when this replica stops being leader after having been one; never without
    /// election.
    pub async fn lost(&self) {
        let mut role = self.role.clone();
        loop {
            if *role.borrow_and_update() == Role::Lost {
                return;
            }
            if role.changed().await.is_err() {
                // No election: nothing can be lost.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Gives the Lease up at shutdown, so a standby does not wait for it to expire. Errors
    /// are logged: the Lease then simply expires.
    pub async fn release(&self) {
        if let Some(e) = &self.elector {
            e.task.abort();
            if let Err(err) = e.manager.release().await {
                warn!("could not release the leader Lease (it will expire): {err}");
            } else if let Some(l) = &self.lease {
                info!(lease = %l, "released the leader Lease");
            }
        }
    }
}

/// Keeps trying for the Lease and, once held, renewing it; publishes every change of role.
/// A renewal that keeps failing for `renew_before` means the Lease may expire under us: the
/// role becomes [`Role::Lost`] before another replica can take it.
async fn campaign(manager: Arc<LeaseManager>, tx: watch::Sender<Role>, opts: LeaseOptions) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let leader = *tx.borrow() == Role::Leader;
        match manager.changed().await {
            Ok(true) => {
                failing_since = None;
                info!(lease = %opts.lease(), identity = %opts.identity, "became leader");
                let _ = tx.send(Role::Leader);
            }
            Ok(false) if leader => {
                error!(lease = %opts.lease(), "the leader Lease was taken by another replica");
                let _ = tx.send(Role::Lost);
                return;
            }
            Ok(false) => failing_since = None,
            Err(e) if leader => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                // Half the margin: the other replicas' clocks may run ahead.
                if since.elapsed() >= opts.renew_before / 2 {
                    error!(lease = %opts.lease(), "could not renew the leader Lease in time: {e}");
                    let _ = tx.send(Role::Lost);
                    return;
                }
                warn!(lease = %opts.lease(), "renewing the leader Lease failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                warn!(lease = %opts.lease(), "leader election: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(duration: u64, renew_before: u64) -> LeaseOptions {
        LeaseOptions {
            name: "upgrade-controller".into(),
            namespace: "upgrade-system".into(),
            identity: "pod-a".into(),
            duration: Duration::from_secs(duration),
            renew_before: Duration::from_secs(renew_before),
        }
    }

    #[test]
    fn lease_timings_the_manager_would_panic_on_are_refused_with_the_flags_named() {
        assert!(opts(15, 5).validate().is_ok());
        for (d, g) in [(5, 5), (5, 0), (1, 0), (3, 7)] {
            let err = opts(d, g).validate().unwrap_err();
            assert!(err.contains("--leader-election-renew-before"), "{err}");
        }
        let mut o = opts(15, 5);
        o.identity.clear();
        assert!(o.validate().unwrap_err().contains("identity"));
    }

    #[tokio::test]
    async fn without_election_the_process_leads_and_never_loses() {
        let l = Leadership::sole();
        assert!(l.is_leader());
        assert_eq!(l.describe(), "leader (no election)");
        let lost = tokio::time::timeout(Duration::from_millis(50), l.lost()).await;
        assert!(lost.is_err(), "lost() resolved without an election");
        use futures::StreamExt;
        let mut acquired = Box::pin(l.acquired());
        assert_eq!(acquired.next().await, Some(()));
    }
}
