//! Infrastructure provider modules (DOMAIN.md §3, §4).
//!
//! Every provider answers the same few questions behind [`Provider`]: which machine-template
//! kinds it owns, where a template carries its OS image, and which fields a clone must drop.
//! [`clone_template`] then builds the hop's new template from the one referenced today, under a
//! deterministic name ([`clone_name`]), so a retried hop finds the template it already made.
//! Adding a provider is one new module and one line in [`for_template_kind`].
//!
//! Before a rollout, the providers also say what it needs from the platform (`capacity.rs`): the
//! pool of per-machine slots a template draws from and how many are free, and how to confirm the
//! hop's OS image is staged.

mod baremetal;
mod capacity;
mod capd;
mod dcs;
mod hcs;
mod network;
mod vsphere;

use serde_json::{Map, Value, json};

pub use baremetal::{Baremetal, IMAGE_CATALOG};
pub use capacity::{
    ImageLookup, PLATFORM_NAMESPACE, SlotCount, SlotPoolRef, image_confirmed, is_label_value,
};
pub use capd::Capd;
pub use dcs::{DCS_VM_TEMPLATE_LABEL, Dcs};
pub use hcs::{HCS_OS_IMAGE_KEY, HCS_OS_RELEASE_LABEL, Hcs};
pub use network::{
    KUBE_OVN, NETWORK_TYPE_ANNOTATION, NetworkTypeSource, PlatformFacts, uses_kube_ovn,
};
pub use vsphere::Vsphere;

/// Annotation on a cloned template: the name of the first template of its line, so clones of
/// clones keep short, predictable names.
pub const TEMPLATE_BASE_ANNOTATION: &str = "upgrade.cpaas.io/template-base";
/// Annotation on a cloned template: the OS image it was cloned for.
pub const OS_IMAGE_ANNOTATION: &str = "upgrade.cpaas.io/os-image";
/// Annotation on a cloned template: the Kubernetes version of the hop it was cloned for.
pub const KUBERNETES_VERSION_ANNOTATION: &str = "upgrade.cpaas.io/kubernetes-version";

/// Which image name of a matrix row a provider uses (`images.dcs`, ... or `osImageVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKey {
    Dcs,
    Vsphere,
    Hcs,
    /// No provider-specific name (CAPD in tests): the row's osImageVersion.
    Default,
    /// The image is found by the Kubernetes version itself (bare metal's image catalog): the
    /// row's `kubernetesVersion`, with the leading `v`.
    KubernetesVersion,
}

/// Errors building a clone. All are problems with the source template's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("no provider module handles machine template kind {0:?}")]
    UnknownKind(String),
    #[error("{kind} {name} has no object at {path}; cannot set the image")]
    MissingPath {
        kind: String,
        name: String,
        path: String,
    },
    #[error("template has no metadata.name")]
    Unnamed,
    #[error("provider {0} draws no per-machine slots from a pool")]
    NoSlotPool(&'static str),
    #[error("{kind} {name}: {reason}")]
    PoolShape {
        kind: String,
        name: String,
        reason: String,
    },
}

impl ProviderError {
    /// A [`ProviderError::PoolShape`] about `pool`.
    pub(crate) fn pool_shape(pool: &Value, reason: impl Into<String>) -> Self {
        ProviderError::PoolShape {
            kind: pool["kind"].as_str().unwrap_or("pool").to_string(),
            name: pool["metadata"]["name"].as_str().unwrap_or("?").to_string(),
            reason: reason.into(),
        }
    }
}

/// One infrastructure provider.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Short name for logs and status (`dcs`, `vsphere`, `hcs`, `capd`).
    fn name(&self) -> &'static str;
    /// Machine template kinds (group `infrastructure.cluster.x-k8s.io`) this provider owns.
    fn template_kinds(&self) -> &'static [&'static str];
    /// Which of a matrix row's image names applies.
    fn image_key(&self) -> ImageKey;
    /// The field under `spec.template.spec` that names the OS image, for providers that
    /// have one fixed field.
    fn image_field(&self) -> Option<&'static str> {
        None
    }
    /// Writes `image` into a cloned template (by default into [`Provider::image_field`]).
    fn set_image(&self, template: &mut Value, image: &str) -> Result<(), ProviderError> {
        match self.image_field() {
            Some(field) => set_at(template, &["spec", "template", "spec", field], json!(image)),
            None => Ok(()),
        }
    }
    /// Reads the image a template uses, if the provider records one.
    fn image_of(&self, template: &Value) -> Option<String> {
        let field = self.image_field()?;
        template["spec"]["template"]["spec"][field]
            .as_str()
            .map(str::to_string)
    }
    /// Paths under `spec.template.spec` that identify one machine and must not be copied.
    fn per_machine_fields(&self) -> &'static [&'static str] {
        &["providerID"]
    }
    /// The kind (group `infrastructure.cluster.x-k8s.io`) of this provider's slot pools.
    fn slot_pool_kind(&self) -> Option<&'static str> {
        None
    }
    /// The slot pool a machine template (the full object) draws per-machine IP/hostname/disk
    /// slots from; `None` when the provider or this template has none.
    fn slot_pool(&self, _template: &Value) -> Option<SlotPoolRef> {
        None
    }
    /// Kind (group `infrastructure.cluster.x-k8s.io`, the pool's version) of the objects that
    /// hold a slot, which must be listed in the pool's namespace to count free slots; `None`
    /// when the pool's own status has the counters.
    fn slot_holder_kind(&self) -> Option<&'static str> {
        None
    }
    /// Free and total slots of `pool` (the full object), given the [`Provider::slot_holder_kind`]
    /// objects listed in its namespace.
    fn free_slots(&self, _pool: &Value, _holders: &[Value]) -> Result<SlotCount, ProviderError> {
        Err(ProviderError::NoSlotPool(self.name()))
    }
    /// The fields [`Provider::free_slots`] reads of pools and slot holders, as dotted paths
    /// below the object's top level (`spec.pool`). Watch caches keep only these (and the
    /// metadata) of such objects: a holder's full spec is most of its size and never read.
    fn slot_fields(&self) -> &'static [&'static str] {
        &["spec", "status"]
    }
    /// Whether each hop gets a new machine template (the image is in the template). `false`:
    /// the template carries no image (bare metal), and the hop's write keeps the reference.
    fn new_template_per_hop(&self) -> bool {
        true
    }
    /// Whether a rollout may create machines before deleting old ones. `false`: `maxSurge`
    /// must be 0 on the control plane and every MachineDeployment (bare metal).
    fn surge_allowed(&self) -> bool {
        true
    }
    /// How to confirm that the OS image `image` is staged on the platform.
    fn image_lookup(&self, _image: &str) -> ImageLookup {
        ImageLookup::Unverifiable
    }
    /// Where its clusters record a Kube-OVN network, its AppRelease's chart and its Kube-OVN
    /// thresholds (`None`: a provider without the platform's Kube-OVN integration, CAPD).
    fn platform_facts(&self) -> Option<PlatformFacts> {
        None
    }
}

static DCS: Dcs = Dcs;
static HCS: Hcs = Hcs;
static VSPHERE: Vsphere = Vsphere;
static CAPD: Capd = Capd;
static BAREMETAL: Baremetal = Baremetal;

/// The provider whose slot pools or slot holders are of `kind`.
pub fn for_slot_kind(kind: &str) -> Option<&'static dyn Provider> {
    let all: [&'static dyn Provider; 5] = [&DCS, &HCS, &VSPHERE, &CAPD, &BAREMETAL];
    all.into_iter()
        .find(|p| p.slot_pool_kind() == Some(kind) || p.slot_holder_kind() == Some(kind))
}

/// Keeps of `object` its `apiVersion`, `kind` and `metadata`, and of the rest only the dotted
/// `paths` (see [`Provider::slot_fields`]); everything else is dropped.
pub fn keep_only(object: &mut Value, paths: &[&str]) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let mut kept = serde_json::Map::new();
    for top in ["apiVersion", "kind", "metadata"] {
        if let Some(v) = map.remove(top) {
            kept.insert(top.to_string(), v);
        }
    }
    'paths: for path in paths {
        let parts: Vec<&str> = path.split('.').collect();
        let Some((last, parents)) = parts.split_last() else {
            continue;
        };
        let Some(value) = parents
            .iter()
            .try_fold(&*map, |m, part| m.get(*part)?.as_object())
            .and_then(|parent| parent.get(*last).cloned())
        else {
            continue;
        };
        let mut target = &mut kept;
        for part in parents {
            let entry = target
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
            match entry {
                Value::Object(m) => target = m,
                // An earlier, shorter path already kept this part whole.
                _ => continue 'paths,
            }
        }
        target.insert(last.to_string(), value);
    }
    *map = kept;
}

/// The provider owning a machine template kind.
pub fn for_template_kind(kind: &str) -> Result<&'static dyn Provider, ProviderError> {
    let all: [&'static dyn Provider; 5] = [&DCS, &HCS, &VSPHERE, &CAPD, &BAREMETAL];
    all.into_iter()
        .find(|p| p.template_kinds().contains(&kind))
        .ok_or_else(|| ProviderError::UnknownKind(kind.to_string()))
}

/// Whether a template's slot pool reference may be read: it must name the provider's own pool
/// kind in group `infrastructure.cluster.x-k8s.io` and stay in the template's namespace `ns`.
/// Templates belong to the tenant's namespace, so anything else would let a tenant make the
/// controller read other kinds, or other namespaces, with its cluster-wide rights.
pub fn check_pool_ref(provider: &dyn Provider, pool: &SlotPoolRef, ns: &str) -> Result<(), String> {
    let group = pool.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let expected = provider.slot_pool_kind();
    if group != "infrastructure.cluster.x-k8s.io" || Some(pool.kind.as_str()) != expected {
        return Err(format!(
            "the slot pool reference names {} {}, not a {} of group infrastructure.cluster.x-k8s.io; refused",
            pool.api_version,
            pool.kind,
            expected.unwrap_or("slot pool")
        ));
    }
    if let Some(other) = pool.namespace.as_deref().filter(|n| *n != ns) {
        return Err(format!(
            "the slot pool reference {} {} points into namespace {other:?}, outside the request's namespace {ns:?}; refused",
            pool.kind, pool.name
        ));
    }
    Ok(())
}

/// Sets `value` at `path` under `root`, which must already hold every object on the way.
pub(crate) fn set_at(root: &mut Value, path: &[&str], value: Value) -> Result<(), ProviderError> {
    let missing = |root: &Value| ProviderError::MissingPath {
        kind: root["kind"].as_str().unwrap_or("?").to_string(),
        name: root["metadata"]["name"].as_str().unwrap_or("?").to_string(),
        path: path.join("."),
    };
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut cur = &mut *root;
    for key in parents {
        if !cur.get(*key).is_some_and(Value::is_object) {
            let err = missing(&*root);
            return Err(err);
        }
        cur = cur.get_mut(*key).expect("checked above");
    }
    cur.as_object_mut()
        .expect("parents are objects")
        .insert(last.to_string(), value);
    Ok(())
}

/// 64-bit FNV-1a (http://www.isthe.com/chongo/tech/comp/fnv/), a specified hash: the same
/// input gives the same name with every toolchain and release, so a controller rebuilt in the
/// middle of an upgrade finds the templates its predecessor made (std's `DefaultHasher` makes
/// no such promise).
pub fn fnv1a64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        // A separator byte that cannot occur in the parts keeps ("ab","c") apart from ("a","bc").
        let bytes = part.bytes().chain((i + 1 < parts.len()).then_some(0u8));
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The name of the template a hop clones from the line `base`: the base name plus the hop's
/// Kubernetes version and a hash of (base, version, `variant`), e.g.
/// `prod-a-cp-v1-33-7-4-0c1e2a3b`. `variant` is what else makes the clone distinct: the OS
/// image for machine templates, the kubelet patch for bootstrap templates. Deterministic across
/// releases ([`fnv1a64`]), a valid DNS label (≤ 63 characters, base and version shortened as
/// needed, the hash always kept), and unique per (line, version, variant).
pub fn clone_name(base: &str, kubernetes_version: &str, variant: &str) -> String {
    let version: String = kubernetes_version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let hash = format!(
        "{:08x}",
        fnv1a64(&[base, kubernetes_version, variant]) as u32
    );
    let trim = |s: &str, max: usize| -> String {
        let cut: String = s.chars().take(max).collect();
        cut.trim_matches('-').to_string()
    };
    // 63 = base + "-" + version + "-" + 8 hash characters; the version keeps at most 24.
    let version = trim(&version, 24);
    let base = trim(base, 63 - 2 - hash.len() - version.len());
    [base.as_str(), version.as_str(), hash.as_str()]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-")
}

/// The base name of a template's line: its own annotation, or its name for an original.
pub fn template_base(template: &Value) -> Result<String, ProviderError> {
    if let Some(base) = template["metadata"]["annotations"][TEMPLATE_BASE_ANNOTATION].as_str() {
        return Ok(base.to_string());
    }
    template["metadata"]["name"]
        .as_str()
        .map(str::to_string)
        .ok_or(ProviderError::Unnamed)
}

/// Builds the clone of `source` for a hop (DOMAIN.md §3): same kind and namespace, a new
/// deterministic name, server-populated and per-machine fields dropped, the hop's image set,
/// owned by the Cluster (`owner`, a full ownerReference), and annotated with where it came from.
pub fn clone_template(
    provider: &dyn Provider,
    source: &Value,
    kubernetes_version: &str,
    image: &str,
    owner: Value,
) -> Result<Value, ProviderError> {
    let base = template_base(source)?;
    let name = clone_name(&base, kubernetes_version, image);
    let mut clone = json!({
        "apiVersion": source["apiVersion"],
        "kind": source["kind"],
        "metadata": {
            "name": name,
            "namespace": source["metadata"]["namespace"],
            "ownerReferences": [owner],
        },
        "spec": source["spec"].clone(),
    });
    // Labels and annotations are carried over, except what kubectl and earlier clones put
    // there; ours are set afresh.
    if let Some(labels) = source["metadata"]["labels"].as_object() {
        clone["metadata"]["labels"] = Value::Object(labels.clone());
    }
    let mut annotations: Map<String, Value> = source["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.insert(TEMPLATE_BASE_ANNOTATION.into(), json!(base));
    annotations.insert(OS_IMAGE_ANNOTATION.into(), json!(image));
    annotations.insert(
        KUBERNETES_VERSION_ANNOTATION.into(),
        json!(kubernetes_version),
    );
    clone["metadata"]["annotations"] = Value::Object(annotations);
    if let Some(spec) = clone["spec"]["template"]["spec"].as_object_mut() {
        for field in provider.per_machine_fields() {
            spec.remove(*field);
        }
    }
    provider.set_image(&mut clone, image)?;
    Ok(clone)
}

#[cfg(test)]
pub(crate) mod testutil {
    use serde_json::{Value, json};

    /// Parses a YAML fixture.
    pub fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).expect("fixture YAML")
    }

    pub fn owner() -> Value {
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "name": "prod-a",
            "uid": "5b0c2c8e-0000-4000-8000-000000000001",
        })
    }

    /// What every clone must satisfy, whatever the provider.
    pub fn assert_clean_clone(clone: &Value, source: &Value) {
        let meta = &clone["metadata"];
        for server_field in [
            "resourceVersion",
            "uid",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            assert!(meta.get(server_field).is_none(), "{server_field} copied");
        }
        assert!(clone.get("status").is_none(), "status copied");
        assert_eq!(meta["namespace"], source["metadata"]["namespace"]);
        assert_eq!(clone["kind"], source["kind"]);
        assert_eq!(meta["ownerReferences"][0]["kind"], "Cluster");
        assert!(
            meta["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        assert!(
            clone["spec"]["template"]["spec"]
                .get("providerID")
                .is_none()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_clean_clone, owner, yaml};

    /// A provider with a fixed image field, cloned from its realistic fixture (checked against
    /// the provider's CRD in alauda/immutable-infra-docs).
    fn check_field_provider(provider: &dyn Provider, fixture: &str) {
        let field = provider.image_field().expect("a fixed image field");
        let source = yaml(fixture);
        assert_eq!(
            provider.image_of(&source).as_deref(),
            Some("acp-4.1.6-kube-v1.32.11-2")
        );
        let image = "acp-4.2.5-kube-v1.33.7-4";
        let clone = clone_template(provider, &source, "v1.33.7-4", image, owner()).unwrap();
        assert_clean_clone(&clone, &source);
        assert_eq!(clone["spec"]["template"]["spec"][field], image);
        assert_eq!(provider.image_of(&clone).as_deref(), Some(image));
        // Everything else of the machine shape is kept (the IP/config pool reference among
        // it); only per-machine identity goes.
        let mut expected = source["spec"].clone();
        let spec = expected["template"]["spec"].as_object_mut().unwrap();
        for f in provider.per_machine_fields() {
            assert!(
                clone["spec"]["template"]["spec"].get(*f).is_none(),
                "{f} copied"
            );
            spec.remove(*f);
        }
        spec.insert(field.to_string(), json!(image));
        assert_eq!(clone["spec"], expected);
        assert_eq!(clone["metadata"]["labels"], source["metadata"]["labels"]);
    }

    #[test]
    fn dcs_clone() {
        check_field_provider(&Dcs, include_str!("fixtures/dcs-machine-template.yaml"));
    }

    #[test]
    fn hcs_clone_also_drops_the_server_id() {
        assert!(Hcs.per_machine_fields().contains(&"serverId"));
        check_field_provider(&Hcs, include_str!("fixtures/hcs-machine-template.yaml"));
    }

    #[test]
    fn vsphere_clone() {
        check_field_provider(
            &Vsphere,
            include_str!("fixtures/vsphere-machine-template.yaml"),
        );
    }

    #[test]
    fn clone_names_are_the_same_in_every_release() {
        // Golden values (also computed by an independent FNV-1a implementation): FNV-1a is
        // specified, so these never change. If this test fails, a
        // controller upgraded mid-upgrade would clone a second template and roll a hop again.
        assert_eq!(fnv1a64(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            clone_name("prod-a-cp", "v1.33.7-4", "acp-4.2.5-kube-v1.33.7-4"),
            GOLDEN_CP
        );
        assert_eq!(
            clone_name(
                "prod-a-md-a",
                "v1.35.6-acp.1",
                "acp-4.4.0-kube-v1.35.6-acp.1"
            ),
            GOLDEN_MD
        );
    }
    const GOLDEN_CP: &str = "prod-a-cp-v1-33-7-4-d276a1e3";
    const GOLDEN_MD: &str = "prod-a-md-a-v1-35-6-acp-1-f03d0be4";

    #[test]
    fn clone_names_stay_dns_labels_whatever_the_lengths() {
        for base_len in [1, 40, 63, 80] {
            for version in [
                "v1.33.7",
                "v1.35.6-acp.1",
                &format!("v1.35.6-{}", "x".repeat(60)),
            ] {
                let n = clone_name(&"b".repeat(base_len), version, "img");
                assert!(n.len() <= 63, "{n}");
                assert!(
                    n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{n}"
                );
                assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
            }
        }
    }

    #[test]
    fn clone_names_are_deterministic_short_and_distinct() {
        let a = clone_name("prod-a-cp", "v1.33.7-4", "img-1");
        assert_eq!(a, clone_name("prod-a-cp", "v1.33.7-4", "img-1"));
        assert!(a.starts_with("prod-a-cp-v1-33-7-4-"), "{a}");
        assert_ne!(
            a,
            clone_name("prod-a-cp", "v1.33.7-4", "img-2"),
            "image is part of the identity"
        );
        assert_ne!(a, clone_name("prod-a-cp", "v1.34.5-3", "img-1"));
        let long = clone_name(&"x".repeat(80), "v1.35.6-acp.1", "img");
        assert!(long.len() <= 63, "{long}");
        assert!(long.contains("-v1-35-6-acp-1-"));
    }

    #[test]
    fn slot_pool_references_stay_in_the_namespace_and_kind() {
        let pool = |api_version: &str, kind: &str, ns: Option<&str>| SlotPoolRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "p".into(),
            namespace: ns.map(str::to_string),
        };
        let infra = "infrastructure.cluster.x-k8s.io/v1beta1";
        assert!(check_pool_ref(&Hcs, &pool(infra, "HCSMachineConfigPool", None), "t").is_ok());
        assert!(check_pool_ref(&Hcs, &pool(infra, "HCSMachineConfigPool", Some("t")), "t").is_ok());
        let other_ns = check_pool_ref(
            &Hcs,
            &pool(infra, "HCSMachineConfigPool", Some("kube-system")),
            "t",
        );
        assert!(other_ns.unwrap_err().contains("kube-system"));
        assert!(check_pool_ref(&Hcs, &pool("v1", "Secret", None), "t").is_err());
        assert!(check_pool_ref(&Hcs, &pool(infra, "DCSIpHostnamePool", None), "t").is_err());
    }

    #[test]
    fn every_supported_kind_has_exactly_one_provider() {
        for (kind, name) in [
            ("DCSMachineTemplate", "dcs"),
            ("HCSMachineTemplate", "hcs"),
            ("VSphereMachineTemplate", "vsphere"),
            ("DevMachineTemplate", "capd"),
            ("DockerMachineTemplate", "capd"),
        ] {
            assert_eq!(for_template_kind(kind).unwrap().name(), name);
        }
        assert_eq!(
            for_template_kind("AWSMachineTemplate").unwrap_err(),
            ProviderError::UnknownKind("AWSMachineTemplate".into())
        );
    }

    /// Caches keep only `slot_fields` of pools and holders: the counts must not change, and
    /// what is dropped must be dropped.
    #[test]
    fn slot_counts_are_the_same_from_the_kept_fields_only() {
        let docs = |s: &str| -> Vec<Value> {
            serde_yaml_ng::Deserializer::from_str(s)
                .map(|d| serde::Deserialize::deserialize(d).expect("fixture YAML"))
                .collect()
        };
        let cases: [(&dyn Provider, &str, Vec<Value>); 3] = [
            (
                &Dcs,
                include_str!("fixtures/dcs-iphostnamepool.yaml"),
                docs(include_str!("fixtures/dcs-machines.yaml")),
            ),
            (
                &Hcs,
                include_str!("fixtures/hcs-machineconfigpool.yaml"),
                vec![],
            ),
            (
                &Vsphere,
                include_str!("fixtures/vsphere-machineconfigpool.yaml"),
                vec![],
            ),
        ];
        for (provider, pool, holders) in cases {
            let pool = yaml(pool);
            let full = provider.free_slots(&pool, &holders).unwrap();
            let kind = pool["kind"].as_str().unwrap();
            assert_eq!(for_slot_kind(kind).map(|p| p.name()), Some(provider.name()));
            let trim = |o: &Value| {
                let mut o = o.clone();
                keep_only(&mut o, provider.slot_fields());
                o
            };
            let (pool_kept, holders_kept): (Value, Vec<Value>) =
                (trim(&pool), holders.iter().map(trim).collect());
            assert_eq!(
                provider.free_slots(&pool_kept, &holders_kept).unwrap(),
                full,
                "{kind}"
            );
            assert_eq!(pool_kept["metadata"], pool["metadata"]);
            for h in &holders_kept {
                assert!(h["spec"].get("vmConfig").is_none(), "{h}");
                assert_eq!(h["spec"].as_object().map(|m| m.len()), Some(1), "{h}");
            }
        }
        assert_eq!(for_slot_kind("DCSMachine").map(|p| p.name()), Some("dcs"));
        assert!(for_slot_kind("ConfigMap").is_none());
    }

    #[test]
    fn keep_only_keeps_the_paths_and_the_metadata() {
        let mut o = json!({
            "apiVersion": "v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"a": 1, "b": {"c": 2, "d": 3}, "e": "x"},
            "status": {"f": 4},
        });
        keep_only(
            &mut o,
            &["spec.b.c", "spec.e", "status.g", "spec.e.h", "nothing.here"],
        );
        assert_eq!(
            o,
            json!({
                "apiVersion": "v1", "kind": "K", "metadata": {"name": "n"},
                "spec": {"b": {"c": 2}, "e": "x"},
            })
        );
    }
}
