//! A cluster declared in Git and applied by the real Flux kustomize-controller: the harness
//! creates what Git does not hold (DevCluster, machine templates, the workers'
//! KubeadmConfigTemplate, the Cluster) and a [`GitCluster`] publishes the KubeadmControlPlane
//! and MachineDeployments, rendered from the same fixtures, as an artifact one Kustomization
//! applies, so Flux owns their version fields as it does on a real site. The test then plays
//! the person committing to Git: [`GitCluster::declare`] writes what an UpgradeRequest's
//! `status.declareInGit` asks into the declared objects, [`GitCluster::commit`] publishes the
//! next revision and waits for Flux's verdict on it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use upgrade_controller::api::GitDeclaration;

use crate::capi;
use crate::flux::{Kustomization, Outcome, RECONCILE_TIMEOUT, Source};

/// The Kustomization (and source) applying the cluster's Git-managed objects.
pub const KUSTOMIZATION: &str = "cluster";
/// The directory of the artifact holding them.
const PATH: &str = "cluster";

/// Whether an object of `kind` is one Git declares here.
fn in_git(kind: &str) -> bool {
    matches!(kind, "KubeadmControlPlane" | "MachineDeployment")
}

/// `KubeadmControlPlane <name>`, as the controller's status names objects.
pub fn object_name(obj: &Value) -> String {
    format!(
        "{} {}",
        obj["kind"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The segments of a declaration's field (`spec.version`,
/// `metadata.annotations['controlplane.cluster.x-k8s.io/skip-coredns']`).
pub fn field_segments(field: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix("['") {
            let end = quoted
                .find("']")
                .unwrap_or_else(|| panic!("unterminated key in {field}"));
            out.push(quoted[..end].to_string());
            rest = &quoted[end + 2..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(r[..end].to_string());
            rest = &r[end..];
        }
    }
    out
}

/// A declaration's value as it is written in YAML: JSON for a list or map (how the controller
/// publishes those), the string itself otherwise.
fn declared_value(value: &str) -> Value {
    match serde_json::from_str::<Value>(value) {
        Ok(v @ (Value::Array(_) | Value::Object(_))) => v,
        _ => Value::String(value.to_string()),
    }
}

/// Sets `field` of `obj` to `value`; returns whether that changed it.
pub fn set_field(obj: &mut Value, field: &str, value: &str) -> bool {
    let mut cur = obj;
    for seg in field_segments(field) {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("an object")
            .entry(seg)
            .or_insert(Value::Null);
    }
    let want = declared_value(value);
    if *cur == want {
        return false;
    }
    *cur = want;
    true
}

/// The value at `field` of `obj`, if any.
pub fn get_field<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    field_segments(field)
        .iter()
        .try_fold(obj, |cur, seg| cur.get(seg.as_str()))
}

/// An in-memory cluster whose KubeadmControlPlane and MachineDeployments Flux applies from an
/// artifact this test publishes.
pub struct GitCluster {
    pub ns: String,
    pub source: Source,
    pub kustomization: Kustomization,
    /// What Git declares now: the KubeadmControlPlane, then the MachineDeployments.
    pub objects: Vec<Value>,
    /// The last revision published.
    pub revision: String,
}

impl GitCluster {
    /// Creates cluster `name` in `ns` as [`capi::in_memory_cluster`] does, except that its
    /// KubeadmControlPlane and MachineDeployments (with `metadata` merged into theirs: labels,
    /// annotations) are published as revision 1 and applied by Kustomization
    /// [`KUSTOMIZATION`] (`extra` merged into its spec, e.g. `{"ignore": [...]}`); returns once
    /// Flux applied them and every rollout finished.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        client: &kube::Client,
        ns: &str,
        name: &str,
        version: &str,
        template_suffix: &str,
        cp_replicas: u32,
        pools: &[(&str, u32)],
        metadata: Value,
        extra: Value,
    ) -> GitCluster {
        let (mut git, rest): (Vec<Value>, Vec<Value>) =
            capi::in_memory_cluster(name, version, template_suffix, cp_replicas, pools)
                .into_iter()
                .partition(|o| in_git(o["kind"].as_str().unwrap_or_default()));
        for o in &mut git {
            o["metadata"]["namespace"] = json!(ns);
            json_patch::merge(&mut o["metadata"], &metadata);
        }
        capi::create_all(client, ns, &rest).await.unwrap();
        let mut source = Source::new(client, ns, KUSTOMIZATION);
        let first = source.publish(&GitCluster::files_of(&git)).await.unwrap();
        let kustomization = Kustomization::create(
            client,
            ns,
            KUSTOMIZATION,
            &source,
            &format!("./{PATH}"),
            extra,
        )
        .await
        .unwrap();
        let applied = kustomization.reconcile(&first.revision).await.unwrap();
        let cluster = GitCluster {
            ns: ns.to_string(),
            source,
            kustomization,
            objects: git,
            revision: first.revision,
        };
        assert_eq!(
            (applied.ready.status.as_str(), applied.ready.reason.as_str()),
            ("True", "ReconciliationSucceeded"),
            "Flux applies the cluster's first revision: {:?}",
            applied.ready
        );
        assert_eq!(applied.inventory.len(), 1 + pools.len());
        let kcp = format!("{name}-cp");
        capi::wait_done("initial control plane", Duration::from_secs(300), || {
            capi::kcp_rollout_pending(client, ns, &kcp, version)
        })
        .await
        .unwrap();
        for (pool, _) in pools {
            let md = format!("{name}-{pool}");
            capi::wait_done(&md, Duration::from_secs(300), || {
                capi::md_rollout_pending(client, ns, &md, version)
            })
            .await
            .unwrap();
        }
        cluster
    }

    /// The artifact's files: one manifest per declared object.
    pub fn files(&self) -> Vec<(String, String)> {
        Self::files_of(&self.objects)
    }

    fn files_of(objects: &[Value]) -> Vec<(String, String)> {
        objects
            .iter()
            .map(|o| {
                (
                    format!(
                        "{PATH}/{}-{}.yaml",
                        o["kind"].as_str().unwrap_or_default().to_lowercase(),
                        o["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    serde_yaml_ng::to_string(o).unwrap(),
                )
            })
            .collect()
    }

    /// The declared object `object` (`KubeadmControlPlane demo-cp`).
    pub fn object_mut(&mut self, object: &str) -> &mut Value {
        self.objects
            .iter_mut()
            .find(|o| object_name(o) == object)
            .unwrap_or_else(|| panic!("Git declares no {object}"))
    }

    /// Writes `asked` (an UpgradeRequest's `status.declareInGit`) into the declared objects;
    /// returns whether anything changed (nothing to commit otherwise).
    pub fn declare(&mut self, asked: &[GitDeclaration]) -> bool {
        let mut changed = false;
        for d in asked {
            changed |= set_field(self.object_mut(&d.object), &d.field, &d.value);
        }
        changed
    }

    /// The declarations of `asked` Git does not declare (yet), as `object field: Git has X`.
    pub fn differences(&self, asked: &[GitDeclaration]) -> Vec<String> {
        asked
            .iter()
            .filter_map(|d| {
                let obj = self.objects.iter().find(|o| object_name(o) == d.object);
                let has = obj.and_then(|o| get_field(o, &d.field));
                (has != Some(&declared_value(&d.value))).then(|| {
                    format!(
                        "{} {}: Git has {}, asked {:?}",
                        d.object,
                        d.field,
                        has.map_or("nothing".to_string(), Value::to_string),
                        d.value
                    )
                })
            })
            .collect()
    }

    /// Publishes the declared objects as the next revision and returns Flux's verdict on it
    /// (applied: `Ready=True`; refused: `Ready=False` with the API server's message).
    pub async fn commit(&mut self) -> Outcome {
        let artifact = self.source.publish(&self.files()).await.unwrap();
        self.revision = artifact.revision.clone();
        // Flux may report `Ready=True` for the attempted revision a moment before it records
        // it as applied: wait for both.
        let start = Instant::now();
        loop {
            let out = self
                .kustomization
                .wait_revision(&artifact.revision, RECONCILE_TIMEOUT)
                .await
                .unwrap();
            if out.ready.status != "True" || out.last_applied_revision == artifact.revision {
                return out;
            }
            assert!(
                start.elapsed() < RECONCILE_TIMEOUT,
                "Flux reports revision {} Ready but never applied: {out:?}",
                artifact.revision
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asks Flux to reconcile the last revision now and returns its verdict.
    pub async fn reconcile(&self) -> Outcome {
        self.kustomization.reconcile(&self.revision).await.unwrap()
    }

    /// Re-applies the Kustomization with `extra` merged into its spec (e.g. `{"ignore": [...]}`
    /// or `{"ignore": null}`), as a person editing it would; Flux reconciles on the change.
    pub async fn edit_kustomization(&mut self, client: &kube::Client, extra: Value) {
        self.kustomization = Kustomization::create(
            client,
            &self.ns,
            KUSTOMIZATION,
            &self.source,
            &format!("./{PATH}"),
            extra,
        )
        .await
        .unwrap();
    }
}

/// The managers owning `field` (dotted, as in [`get_field`]) of `obj` in its managedFields.
pub fn owners(obj: &Value, field: &str) -> Vec<String> {
    let path: Vec<String> = field_segments(field)
        .iter()
        .map(|s| format!("f:{s}"))
        .collect();
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            path.iter()
                .try_fold(&m["fieldsV1"], |cur, seg| cur.get(seg.as_str()))
                .is_some()
        })
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect()
}

/// What Flux said about a revision, in one line for logs.
pub fn verdict(o: &Outcome) -> String {
    format!(
        "{} {}: {} ({})",
        o.ready.status, o.ready.reason, o.ready.message, o.last_attempted_revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_quoted_keys_are_set_and_read() {
        let mut o = json!({"metadata": {"name": "cp"}, "spec": {"version": "v1"}});
        assert!(set_field(&mut o, "spec.version", "v2"));
        assert!(!set_field(&mut o, "spec.version", "v2"));
        assert!(set_field(
            &mut o,
            "metadata.annotations['controlplane.cluster.x-k8s.io/skip-coredns']",
            ""
        ));
        assert_eq!(
            o["metadata"]["annotations"]["controlplane.cluster.x-k8s.io/skip-coredns"],
            ""
        );
        assert!(set_field(&mut o, "spec.files", r#"[{"path":"/x"}]"#));
        assert_eq!(o["spec"]["files"][0]["path"], "/x");
        assert_eq!(
            get_field(&o, "spec.version").and_then(Value::as_str),
            Some("v2")
        );
        assert_eq!(
            field_segments("a.b['c.d/e'].f"),
            ["a", "b", "c.d/e", "f"].map(String::from)
        );
    }

    #[test]
    fn owners_are_read_from_managed_fields() {
        let o = json!({"metadata": {"managedFields": [
            {"manager": "a", "fieldsV1": {"f:spec": {"f:version": {}}}},
            {"manager": "b", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]}});
        assert_eq!(owners(&o, "spec.version"), ["a"]);
    }
}
