//! Watch caches: the latest state of every object of one kind, from one watch, indexed by the
//! Cluster it belongs to. Observe reads them instead of the API server; the same events wake
//! exactly the requests of that Cluster.
//!
//! Each cache is fed by a watcher over [`DeserializeGuard`]s: an object that does not
//! deserialize is left out (and logged once) instead of breaking the stream for every other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, utils::Backoff};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

/// A Cluster: (namespace, name).
pub type ClusterKey = (String, String);

/// An object's place: (namespace, name).
type ObjectKey = (String, String);

struct Inner<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    by_namespace: HashMap<String, BTreeSet<String>>,
    by_cluster: HashMap<ClusterKey, BTreeSet<String>>,
    cluster_of: HashMap<ObjectKey, ClusterKey>,
    /// Objects of a relist in progress (swapped in at `InitDone`).
    init: Option<Vec<Arc<K>>>,
    /// The first list has completed.
    synced: bool,
    /// Why the watch failed last, until it delivers again.
    failing: Option<WatchFailure>,
}

/// A failing watch, for the status of the requests that wait for its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFailure {
    /// [`crate::error::Error::reason`] of the API server's answer.
    pub reason: &'static str,
    pub message: String,
}

impl<K> Default for Inner<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_namespace: HashMap::new(),
            by_cluster: HashMap::new(),
            cluster_of: HashMap::new(),
            init: None,
            synced: false,
            failing: None,
        }
    }
}

/// The cache of one kind. Cheap to clone (shared).
pub struct Cache<K> {
    inner: Arc<RwLock<Inner<K>>>,
    cluster: fn(&K) -> Option<ClusterKey>,
    /// Whether objects keep their `managedFields` (only where the controller reads them:
    /// KubeadmControlPlanes and MachineDeployments, for outside changes and GitOps owners).
    /// Elsewhere they are dropped: they are often most of an object's size.
    managed_fields: bool,
    /// What else of an object is dropped before it is stored ([`Cache::trimmed`]).
    trim: Option<Arc<Trim<K>>>,
}

type Trim<K> = dyn Fn(&mut K) + Send + Sync;

/// Set by `kubectl apply` (client-side): a copy of the whole object, which nothing here reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cluster: self.cluster,
            managed_fields: self.managed_fields,
            trim: self.trim.clone(),
        }
    }
}

fn object_key<K: Resource>(obj: &K) -> ObjectKey {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl<K: Resource> Cache<K> {
    /// An empty cache; `cluster` names the Cluster an object belongs to (if any).
    pub fn new(cluster: fn(&K) -> Option<ClusterKey>) -> Self {
        Self {
            inner: Arc::default(),
            cluster,
            managed_fields: false,
            trim: None,
        }
    }

    /// This cache, dropping with `trim` what the controller never reads of its objects before
    /// they are stored (objects are held for as long as they exist, so their size is the
    /// controller's memory).
    pub fn trimmed(self, trim: impl Fn(&mut K) + Send + Sync + 'static) -> Self {
        Self {
            trim: Some(Arc::new(trim)),
            ..self
        }
    }

    /// [`Cache::new`], keeping each object's `managedFields`.
    pub fn with_managed_fields(cluster: fn(&K) -> Option<ClusterKey>) -> Self {
        Self {
            managed_fields: true,
            ..Self::new(cluster)
        }
    }

    /// The object as stored: without `managedFields` unless this cache keeps them, without
    /// kubectl's last-applied copy, and trimmed.
    fn stored(&self, obj: &K) -> Arc<K>
    where
        K: Clone,
    {
        let mut obj = obj.clone();
        let meta = obj.meta_mut();
        if !self.managed_fields {
            meta.managed_fields = None;
        }
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
        if let Some(trim) = &self.trim {
            trim(&mut obj);
        }
        Arc::new(obj)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<K>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, inner: &mut Inner<K>, obj: Arc<K>) {
        let key = object_key(obj.as_ref());
        Self::unindex(inner, &key);
        if let Some(cluster) = (self.cluster)(obj.as_ref()) {
            inner
                .by_cluster
                .entry(cluster.clone())
                .or_default()
                .insert(key.1.clone());
            inner.cluster_of.insert(key.clone(), cluster);
        }
        inner
            .by_namespace
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        inner.objects.insert(key, obj);
    }

    fn unindex(inner: &mut Inner<K>, key: &ObjectKey) {
        if let Some(names) = inner.by_namespace.get_mut(&key.0) {
            names.remove(&key.1);
            if names.is_empty() {
                inner.by_namespace.remove(&key.0);
            }
        }
        if let Some(cluster) = inner.cluster_of.remove(key)
            && let Some(names) = inner.by_cluster.get_mut(&cluster)
        {
            names.remove(&key.1);
            if names.is_empty() {
                inner.by_cluster.remove(&cluster);
            }
        }
    }

    /// Applies one watcher event.
    pub fn apply(&self, event: &Event<K>)
    where
        K: Clone,
    {
        let mut inner = self.write();
        match event {
            Event::Apply(obj) => {
                let obj = self.stored(obj);
                self.insert(&mut inner, obj)
            }
            Event::Delete(obj) => {
                let key = object_key(obj);
                Self::unindex(&mut inner, &key);
                inner.objects.remove(&key);
            }
            Event::Init => inner.init = Some(Vec::new()),
            Event::InitApply(obj) => {
                let obj = self.stored(obj);
                if let Some(buffer) = inner.init.as_mut() {
                    buffer.push(obj);
                }
            }
            Event::InitDone => {
                let buffer = inner.init.take().unwrap_or_default();
                inner.objects.clear();
                inner.by_namespace.clear();
                inner.by_cluster.clear();
                inner.cluster_of.clear();
                for obj in buffer {
                    self.insert(&mut inner, obj);
                }
                inner.synced = true;
            }
        }
    }

    /// The object `namespace/name`, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every cached object of `cluster`, by name.
    pub fn of_cluster(&self, cluster: &ClusterKey) -> Vec<Arc<K>> {
        let inner = self.read();
        inner
            .by_cluster
            .get(cluster)
            .into_iter()
            .flatten()
            .filter_map(|name| inner.objects.get(&(cluster.0.clone(), name.clone())))
            .cloned()
            .collect()
    }

    /// Every cached object of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let inner = self.read();
        inner
            .by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| inner.objects.get(&(namespace.to_string(), name.clone())))
            .cloned()
            .collect()
    }

    /// Every cached object (for rare scans: a matrix or the global cluster changed).
    pub fn all(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The Cluster `obj` belongs to.
    pub fn cluster_of(&self, obj: &K) -> Option<ClusterKey> {
        (self.cluster)(obj)
    }

    /// Marks a cache of a kind the API server does not serve as complete (and empty).
    pub fn mark_synced(&self) {
        self.write().synced = true;
    }

    /// The first list has completed (the cache is complete).
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// Why the watch of this kind fails, while it does.
    pub fn failing(&self) -> Option<WatchFailure> {
        self.read().failing.clone()
    }

    fn set_failing(&self, failing: Option<WatchFailure>) {
        let mut inner = self.write();
        if inner.failing != failing {
            inner.failing = failing;
        }
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Backoff of a watch that failed (the API server restarting, say): 250 ms doubling to 5 s,
/// so a watch is back within seconds of the API server (kube's default goes to 30 s).
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(250),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Some(now)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Duration::from_millis(250);
    }
}

/// An event with the objects that failed to deserialize left out (each logged).
fn valid<K: Resource>(event: Event<DeserializeGuard<K>>, what: &str) -> Option<Event<K>> {
    let keep = |g: DeserializeGuard<K>| match g.0 {
        Ok(obj) => Some(obj),
        Err(invalid) => {
            warn!(
                kind = what,
                name = invalid.metadata.name.as_deref().unwrap_or("?"),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or(""),
                "ignoring an object that does not deserialize: {}",
                invalid.error
            );
            None
        }
    };
    match event {
        Event::Apply(g) => keep(g).map(Event::Apply),
        Event::Delete(g) => keep(g).map(Event::Delete),
        Event::InitApply(g) => keep(g).map(Event::InitApply),
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
    }
}

/// Watches `api` into `cache` and yields its events (after the cache has applied them).
pub fn events<K>(
    api: kube::Api<DeserializeGuard<K>>,
    config: watcher::Config,
    cache: Cache<K>,
    what: &'static str,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Send + Sync,
{
    let health = cache.clone();
    watcher(api, config)
        .backoff(WatchBackoff::default())
        // A failed watch is retried by its own backoff above and reported through the cache;
        // its errors go no further. The controller pauses *every* trigger stream for its
        // trigger backoff (up to 30 s, growing) on any error, so one kind's errors would
        // starve all the others' events and leave the caches stale (seen after a
        // kube-apiserver restart: minutes without a write while the gate was true).
        .filter_map(move |r| {
            futures::future::ready(match r {
                Ok(event) => {
                    health.set_failing(None);
                    Some(Ok(event))
                }
                Err(e) => {
                    let (reason, message) = crate::error::watch_failure(&e);
                    warn!(kind = what, reason, "watch failed, retrying: {message}");
                    health.set_failing(Some(WatchFailure {
                        reason,
                        message: format!("watching {what}: {message}"),
                    }));
                    None
                }
            })
        })
        .try_filter_map(move |event| {
            let event = valid(event, what);
            if let Some(e) = &event {
                cache.apply(e);
            }
            futures::future::ready(Ok(event))
        })
}

/// [`events`], as the objects each event touched, for the controller to map to the requests
/// it wakes.
pub fn watch<K>(
    api: kube::Api<DeserializeGuard<K>>,
    config: watcher::Config,
    cache: Cache<K>,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Send + Sync,
{
    events(api, config, cache, what).touched_objects()
}

/// How many objects of each kind are cached (for logs and readiness).
pub fn summary(counts: &[(&str, usize)]) -> String {
    let by: BTreeMap<&str, usize> = counts.iter().copied().collect();
    format!("{by:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capi::{KubeadmControlPlane, Machine};

    fn with_managed_fields<K: serde::de::DeserializeOwned>(kind: &str) -> K {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": kind,
            "metadata": {"name": "a", "namespace": "ns", "managedFields": [
                {"manager": "kustomize-controller", "operation": "Apply",
                 "fieldsV1": {"f:spec": {"f:version": {}}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn managed_fields_are_dropped_except_where_kept() {
        let machines: Cache<Machine> = Cache::new(|_| None);
        machines.apply(&Event::Apply(with_managed_fields("Machine")));
        assert_eq!(
            machines.get("ns", "a").unwrap().metadata.managed_fields,
            None
        );
        machines.apply(&Event::Init);
        machines.apply(&Event::InitApply(with_managed_fields("Machine")));
        machines.apply(&Event::InitDone);
        assert_eq!(
            machines.get("ns", "a").unwrap().metadata.managed_fields,
            None
        );

        let kcps: Cache<KubeadmControlPlane> = Cache::with_managed_fields(|_| None);
        kcps.apply(&Event::Apply(with_managed_fields("KubeadmControlPlane")));
        assert_eq!(
            kcps.get("ns", "a")
                .unwrap()
                .metadata
                .managed_fields
                .as_ref()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn trimmed_caches_store_only_what_is_kept_and_never_kubectls_copy() {
        use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "infrastructure.cluster.x-k8s.io",
            "v1beta1",
            "DCSMachine",
        ));
        let mut holder = DynamicObject::new("m", &ar).within("ns");
        holder.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("keep".to_string(), "me".to_string()),
            ]
            .into(),
        );
        holder.data = serde_json::json!({
            "spec": {"vmConfig": {"big": true}, "ipHostPoolRef": {"name": "p"}},
            "status": {"networkConfig": {"ip": "10.0.0.1"}, "addresses": []},
        });
        let cache: Cache<DynamicObject> = Cache::new(|_| None).trimmed(|o: &mut DynamicObject| {
            providers::keep_only(&mut o.data, &["spec.ipHostPoolRef", "status.networkConfig"])
        });
        cache.apply(&Event::Apply(holder));
        let stored = cache.get("ns", "m").unwrap();
        assert_eq!(
            stored.data,
            serde_json::json!({
                "spec": {"ipHostPoolRef": {"name": "p"}},
                "status": {"networkConfig": {"ip": "10.0.0.1"}},
            })
        );
        let annotations = stored.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert_eq!(annotations["keep"], "me");
    }
}
