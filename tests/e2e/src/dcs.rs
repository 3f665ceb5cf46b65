//! A "static" Huawei DCS cluster for end-to-end tests: the complete set of CAPI and DCS objects
//! of a DCS workload cluster that looks fully rolled out, with the test playing the
//! infrastructure provider.
//!
//! There is no DCS controller here, so the DCS kinds come from open-schema test CRDs
//! (`tests/e2e/manifests/dcs/`) and every object is created with CAPI's per-object pause
//! annotation `cluster.x-k8s.io/paused` (the Cluster, its KubeadmControlPlane,
//! MachineDeployments, MachineSets and Machines): the real CAPI controllers then leave every
//! object alone (they only add their finalizers and record a `Paused` condition under
//! `status.v1beta2`), while CAPI's admission webhooks still default and validate everything
//! written. `Cluster.spec.paused` stays false: that is what an operator sets to stop a whole
//! cluster, and the controller waits for it to be cleared before writing anything. [`StaticDcsCluster::create`] writes the objects and then the status subresources a
//! healthy, finished rollout has by CAPI's criteria (DOMAIN.md §5, `controller/src/gate.rs`).
//! Helpers change the picture afterwards: [`set_node_ready`], [`add_pool_entry`],
//! [`stage_images`] / [`unstage_images`]; [`delete_namespace`] tears a test namespace down
//! (CAPI's finalizers on paused objects would otherwise keep it Terminating forever).
//!
//! Slots follow the DCS provider (providers/src/dcs.rs): every machine template names a
//! `DCSIpHostnamePool` through `ipHostPoolRef`, and each DCSMachine holds one pool entry, shown
//! in its `status.networkConfig`. Image ConfigMaps follow the platform: labelled
//! `cpaas.io/dcs-vm-template=<VM template name>` in `cpaas-system`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::capi::{self, CLUSTER_V1BETA1, CONTROLPLANE_V1BETA1, INFRA_V1BETA1};
use crate::fixture;
use crate::harness;
use crate::testenv;

/// Namespace of the platform's DCS image ConfigMaps on the global cluster
/// (alauda/immutable-infra-docs docs/en/infrastructure/huawei-dcs.mdx).
pub const IMAGE_CONFIGMAP_NAMESPACE: &str = "cpaas-system";
/// Label whose value is the DCS VM template name.
pub const VM_TEMPLATE_LABEL: &str = "cpaas.io/dcs-vm-template";
/// Marks objects this module wrote outside a test namespace, so they can be found again.
const FIXTURE_LABEL: &str = "upgrade.cpaas.io/e2e-fixture";
const FIELD_MANAGER: &str = "upgrade-controller-e2e-dcs";

const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
const CONTROL_PLANE_NAME_LABEL: &str = "cluster.x-k8s.io/control-plane-name";
const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
const SET_NAME_LABEL: &str = "cluster.x-k8s.io/set-name";

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/dcs")
}

/// Installs (idempotently, by server-side apply) the test DCS CRDs: DCSCluster,
/// DCSMachineTemplate, DCSMachine and DCSIpHostnamePool, with CAPI's contract label, and waits
/// until they are served.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    testenv::install_crds(client, &manifest_dir(), true)
        .await
        .map(|_| ())
        .context("installing the test DCS CRDs")
}

/// A DCS workload cluster that CAPI leaves alone, fully rolled out at `cp_version`.
///
/// ```text
/// let cluster = StaticDcsCluster {
///     pools: vec![("md-a".into(), 2)],
///     ip_pool_spare: 1,
///     ..StaticDcsCluster::new("dcs-a", &ns)
/// };
/// cluster.create(&client).await?;
/// ```
#[derive(Debug, Clone)]
pub struct StaticDcsCluster {
    pub name: String,
    pub namespace: String,
    /// KubeadmControlPlane `spec.version` (a matrix row's Kubernetes version, suffix included).
    pub cp_version: String,
    /// Workers' version; `None`: `cp_version`.
    pub worker_version: Option<String>,
    pub cp_replicas: u32,
    /// Node pools: (suffix, replicas). The MachineDeployment is `<name>-<suffix>`.
    pub pools: Vec<(String, u32)>,
    /// Entries of every DCSIpHostnamePool beyond those its machines hold.
    pub ip_pool_spare: u32,
    /// `vmTemplateName` of every DCSMachineTemplate (the OS image in DCS).
    pub vm_template: String,
    /// KCP `clusterConfiguration.dns.imageTag` / `etcd.local.imageTag`.
    pub coredns_tag: String,
    pub etcd_tag: String,
    /// KCP `spec.rolloutStrategy.rollingUpdate.maxSurge` (0 or 1).
    pub kcp_max_surge: u32,
    /// MachineDeployments' `spec.strategy.rollingUpdate.maxSurge` (with 0, maxUnavailable is 1).
    pub md_max_surge: u32,
    /// `DCSCluster.spec.networkType`: `kube-ovn` (a KubeOvn step before each control-plane
    /// hop, DOMAIN.md §3) or another CNI (`calico`: none).
    pub network_type: String,
}

impl StaticDcsCluster {
    /// Defaults: ACP v4.0.11's row (Kubernetes v1.31.14-2, coredns 1.12.4-v4.0.20, etcd
    /// v3.5.25-251215; DOMAIN.md §1), three control-plane machines, one pool `md-a` of 2, one
    /// spare pool entry, maxSurge 1 everywhere.
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            cp_version: "v1.31.14-2".into(),
            worker_version: None,
            cp_replicas: 3,
            pools: vec![("md-a".into(), 2)],
            ip_pool_spare: 1,
            vm_template: "MicroOS-5.5-v4.0.11".into(),
            coredns_tag: "1.12.4-v4.0.20".into(),
            etcd_tag: "v3.5.25-251215".into(),
            kcp_max_surge: 1,
            md_max_surge: 1,
            network_type: "kube-ovn".into(),
        }
    }

    pub fn kcp_name(&self) -> String {
        format!("{}-cp", self.name)
    }
    pub fn cp_template_name(&self) -> String {
        format!("{}-cp-dcs", self.name)
    }
    pub fn cp_pool_name(&self) -> String {
        format!("{}-cp-iphostpool", self.name)
    }
    pub fn md_name(&self, pool: &str) -> String {
        format!("{}-{pool}", self.name)
    }
    pub fn md_template_name(&self, pool: &str) -> String {
        format!("{}-{pool}-dcs", self.name)
    }
    pub fn md_pool_name(&self, pool: &str) -> String {
        format!("{}-{pool}-iphostpool", self.name)
    }
    pub fn machine_set_name(&self, pool: &str) -> String {
        format!("{}-{pool}-7c9f5", self.name)
    }
    pub fn worker_config_name(&self) -> String {
        format!("{}-workers", self.name)
    }
    pub fn worker_version(&self) -> &str {
        self.worker_version.as_deref().unwrap_or(&self.cp_version)
    }
    pub fn cp_machine_names(&self) -> Vec<String> {
        (0..self.cp_replicas)
            .map(|i| format!("{}-{i}", self.kcp_name()))
            .collect()
    }
    pub fn md_machine_names(&self, pool: &str) -> Vec<String> {
        let replicas = self
            .pools
            .iter()
            .find(|(p, _)| p == pool)
            .map_or(0, |(_, r)| *r);
        (0..replicas)
            .map(|i| format!("{}-{i}", self.md_name(pool)))
            .collect()
    }
    /// Every Machine (and DCSMachine, same name): control plane first, then each pool.
    pub fn machine_names(&self) -> Vec<String> {
        let mut names = self.cp_machine_names();
        for (pool, _) in &self.pools {
            names.extend(self.md_machine_names(pool));
        }
        names
    }

    /// Entry `i` of slot pool `k` (0 = control plane, then the node pools in order): an
    /// address block per cluster name, so two static clusters in one namespace do not share
    /// addresses.
    fn ip(&self, k: usize, i: u32) -> String {
        let mut h = DefaultHasher::new();
        self.name.hash(&mut h);
        format!("10.{}.{}.{}", 20 + h.finish() % 200, k, 10 + i)
    }

    fn pool_object(&self, k: usize, name: &str, role: &str, held: u32) -> Value {
        let entries: Vec<Value> = (0..held + self.ip_pool_spare)
            .map(|i| {
                let ip = self.ip(k, i);
                let gateway = format!("{}.1", ip.rsplit_once('.').expect("dotted").0);
                let host = format!("{}-{role}-{}", self.name, i + 1);
                json!({"ip": ip, "mask": "24", "gateway": gateway, "dns": "10.0.0.53",
                       "hostname": host, "machineName": host})
            })
            .collect();
        json!({
            "apiVersion": INFRA_V1BETA1, "kind": "DCSIpHostnamePool",
            "metadata": {"name": name, "labels": {CLUSTER_NAME_LABEL: self.name}},
            "spec": {"pool": entries},
        })
    }

    /// A DCSMachineTemplate (fixture `static-dcs/dcs-machine-template.yaml`); the control
    /// plane's is larger and has an etcd disk.
    fn machine_template(&self, name: &str, pool: &str, cp: bool) -> Value {
        let (cpu, memory): (u32, u32) = if cp { (8, 16384) } else { (4, 8192) };
        let mut t = fixture::render_one(
            "static-dcs/dcs-machine-template.yaml",
            &[
                ("NAME", &name),
                ("CLUSTER", &self.name),
                ("VM_TEMPLATE", &self.vm_template),
                ("POOL", &pool),
                ("CPU", &cpu),
                ("MEMORY", &memory),
            ],
        );
        if cp {
            let disks = &mut t["spec"]["template"]["spec"]["vmConfig"]["dcsMachineDiskSpec"];
            if let Some(d) = disks.as_array_mut() {
                d.push(json!({"quantity": 10, "path": "/var/lib/etcd", "format": "xfs", "datastoreClusterName": "e2e-dsc"}));
            }
        }
        t
    }

    /// A DCSMachine's spec: its template's, without the disk list.
    fn dcs_machine_spec(&self, pool: &str, cp: bool) -> Value {
        let mut spec = self.machine_template("", pool, cp)["spec"]["template"]["spec"].take();
        spec["vmConfig"]["dcsMachineDiskSpec"] = json!([]);
        spec
    }

    /// Fixture `static-dcs/cluster.yaml`, its endpoint at `host:port`.
    fn cluster_object(&self, host: &str, port: u16) -> Value {
        fixture::render_one(
            "static-dcs/cluster.yaml",
            &[("NAME", &self.name), ("HOST", &host), ("PORT", &port)],
        )
    }

    /// Fixture `static-dcs/dcs-cluster.yaml`.
    fn dcs_cluster_object(&self, host: &str, port: u16) -> Value {
        fixture::render_one(
            "static-dcs/dcs-cluster.yaml",
            &[
                ("NAME", &self.name),
                ("HOST", &host),
                ("PORT", &port),
                ("NETWORK_TYPE", &self.network_type),
            ],
        )
    }

    /// Fixture `static-dcs/kubeadm-config-template.yaml`.
    fn worker_config_object(&self) -> Value {
        fixture::render_one(
            "static-dcs/kubeadm-config-template.yaml",
            &[("NAME", &self.name)],
        )
    }

    /// Fixture `static-dcs/kubeadm-control-plane.yaml`.
    fn kcp_object(&self) -> Value {
        fixture::render_one(
            "static-dcs/kubeadm-control-plane.yaml",
            &[
                ("NAME", &self.name),
                ("REPLICAS", &self.cp_replicas),
                ("VERSION", &self.cp_version),
                ("MAX_SURGE", &self.kcp_max_surge),
                ("TEMPLATE", &self.cp_template_name()),
                ("COREDNS_TAG", &self.coredns_tag),
                ("ETCD_TAG", &self.etcd_tag),
            ],
        )
    }

    /// Fixture `static-dcs/machine-deployment.yaml`; with maxSurge 0, maxUnavailable is 1.
    fn md_object(&self, pool: &str, replicas: u32) -> Value {
        let max_unavailable: u32 = if self.md_max_surge == 0 { 1 } else { 0 };
        fixture::render_one(
            "static-dcs/machine-deployment.yaml",
            &[
                ("NAME", &self.md_name(pool)),
                ("CLUSTER", &self.name),
                ("REPLICAS", &replicas),
                ("MAX_SURGE", &self.md_max_surge),
                ("MAX_UNAVAILABLE", &max_unavailable),
                ("VERSION", &self.worker_version()),
                ("TEMPLATE", &self.md_template_name(pool)),
            ],
        )
    }

    /// The machine spec of pool `pool`'s MachineDeployment (and MachineSet).
    fn worker_machine_spec(&self, pool: &str) -> Value {
        self.md_object(pool, 0)["spec"]["template"]["spec"].take()
    }

    /// Creates every object in `namespace` (installing the DCS CRDs first), then writes the
    /// status subresources of a finished rollout. Fails on the first object the API server
    /// (or a CAPI webhook) rejects.
    pub async fn create(&self, client: &kube::Client) -> Result<()> {
        install_crds(client).await?;
        let ns = self.namespace.as_str();
        let kubeconfig_path = &harness::env().kubeconfig;
        let kubeconfig = std::fs::read_to_string(kubeconfig_path)
            .with_context(|| format!("reading {}", kubeconfig_path.display()))?;
        let (host, port) = endpoint(&harness::env().server)?;

        // The Cluster, paused (by annotation, as every object here) from its first write so no
        // CAPI controller ever acts on it.
        let cluster = create(client, ns, self.cluster_object(&host, port)).await?;
        let now = now();
        let by_cluster = owner(&cluster, false);
        let with_owner = |mut obj: Value, owner: &Value| {
            obj["metadata"]["ownerReferences"] = json!([owner]);
            obj
        };

        let dcs_cluster = create(
            client,
            ns,
            with_owner(self.dcs_cluster_object(&host, port), &by_cluster),
        )
        .await?;

        // CAPI's kubeconfig Secret (what `clusterctl get kubeconfig` reads), pointing at the
        // test control plane itself: the "workload cluster" is the management cluster.
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{}-kubeconfig", self.name),
                "labels": {CLUSTER_NAME_LABEL: self.name},
                "ownerReferences": [by_cluster],
            },
            "type": "cluster.x-k8s.io/secret",
            "stringData": {"value": kubeconfig},
        }))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the kubeconfig Secret")?;

        // Pools and templates.
        create(
            client,
            ns,
            self.pool_object(0, &self.cp_pool_name(), "cp", self.cp_replicas),
        )
        .await?;
        create(
            client,
            ns,
            with_owner(
                self.machine_template(&self.cp_template_name(), &self.cp_pool_name(), true),
                &by_cluster,
            ),
        )
        .await?;
        for (k, (pool, replicas)) in self.pools.iter().enumerate() {
            create(
                client,
                ns,
                self.pool_object(k + 1, &self.md_pool_name(pool), pool, *replicas),
            )
            .await?;
            create(
                client,
                ns,
                with_owner(
                    self.machine_template(
                        &self.md_template_name(pool),
                        &self.md_pool_name(pool),
                        false,
                    ),
                    &by_cluster,
                ),
            )
            .await?;
        }
        create(
            client,
            ns,
            with_owner(self.worker_config_object(), &by_cluster),
        )
        .await?;

        // Control plane and its machines.
        let kcp = create(client, ns, with_owner(self.kcp_object(), &by_cluster)).await?;
        let cp_labels = json!({
            CLUSTER_NAME_LABEL: self.name, CONTROL_PLANE_LABEL: "", CONTROL_PLANE_NAME_LABEL: self.kcp_name(),
        });
        let mut machines = Vec::new();
        for (i, m) in self.cp_machine_names().iter().enumerate() {
            let machine = self
                .create_machine(client, m, &cp_labels, &self.cp_version, &owner(&kcp, true))
                .await?;
            let ip = self.ip(0, i as u32);
            let host = format!("{}-cp-{}", self.name, i + 1);
            self.create_dcs_machine(
                client,
                &machine,
                &self.cp_pool_name(),
                true,
                &ip,
                &host,
                &now,
            )
            .await?;
            machines.push((machine, ip, host, true));
        }

        // Node pools: MachineDeployment -> MachineSet -> Machines, as CAPI would have built them.
        let mut sets = Vec::new();
        let mut deployments = Vec::new();
        for (k, (pool, replicas)) in self.pools.iter().enumerate() {
            let md = create(
                client,
                ns,
                with_owner(self.md_object(pool, *replicas), &by_cluster),
            )
            .await?;
            let ms_name = self.machine_set_name(pool);
            let labels = json!({
                CLUSTER_NAME_LABEL: self.name, DEPLOYMENT_NAME_LABEL: self.md_name(pool),
                "machine-template-hash": "7c9f5",
            });
            let ms = create(client, ns, with_owner(json!({
                "apiVersion": CLUSTER_V1BETA1, "kind": "MachineSet",
                "metadata": {
                    "name": ms_name, "labels": labels,
                    "annotations": {"machinedeployment.clusters.x-k8s.io/revision": "1"},
                },
                "spec": {
                    "clusterName": self.name,
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": self.worker_machine_spec(pool)},
                },
            }), &owner(&md, true)))
            .await?;
            let mut machine_labels = labels.clone();
            machine_labels[SET_NAME_LABEL] = json!(ms_name);
            for (i, m) in self.md_machine_names(pool).iter().enumerate() {
                let machine = self
                    .create_machine(
                        client,
                        m,
                        &machine_labels,
                        self.worker_version(),
                        &owner(&ms, true),
                    )
                    .await?;
                let ip = self.ip(k + 1, i as u32);
                let host = format!("{}-{pool}-{}", self.name, i + 1);
                self.create_dcs_machine(
                    client,
                    &machine,
                    &self.md_pool_name(pool),
                    false,
                    &ip,
                    &host,
                    &now,
                )
                .await?;
                machines.push((machine, ip, host, false));
            }
            sets.push(ms);
            deployments.push(md);
        }

        // Status: what the DCS provider and CAPI's controllers would have written once the
        // rollout finished, from the bottom up.
        patch_status(
            client,
            ns,
            &dcs_cluster,
            json!({"ready": true, "conditions": [cond("Ready", true, &now)]}),
        )
        .await?;
        for (machine, ip, host, cp) in &machines {
            let version = if *cp {
                self.cp_version.as_str()
            } else {
                self.worker_version()
            };
            patch_status(
                client,
                ns,
                machine,
                machine_status(machine, version, ip, host, *cp, &now),
            )
            .await?;
        }
        for obj in sets.iter().chain(&deployments) {
            let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
            refresh_counters(client, ns, obj, replicas, &now).await?;
        }
        refresh_counters(client, ns, &kcp, self.cp_replicas, &now).await?;
        let fresh = get(client, ns, &cluster).await?;
        let conditions: Vec<Value> = [
            "Ready",
            "ControlPlaneInitialized",
            "ControlPlaneReady",
            "InfrastructureReady",
        ]
        .iter()
        .map(|t| cond(t, true, &now))
        .collect();
        patch_status(
            client,
            ns,
            &cluster,
            json!({
                "phase": "Provisioned",
                "infrastructureReady": true,
                "controlPlaneReady": true,
                "observedGeneration": fresh["metadata"]["generation"],
                "conditions": conditions,
            }),
        )
        .await?;
        Ok(())
    }

    async fn create_machine(
        &self,
        client: &kube::Client,
        name: &str,
        labels: &Value,
        version: &str,
        owner: &Value,
    ) -> Result<Value> {
        create(client, &self.namespace, json!({
            "apiVersion": CLUSTER_V1BETA1, "kind": "Machine",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
            "spec": {
                "clusterName": self.name,
                "version": version,
                "providerID": format!("dcs://{name}"),
                "bootstrap": {"dataSecretName": format!("{name}-bootstrap")},
                "infrastructureRef": {"apiVersion": INFRA_V1BETA1, "kind": "DCSMachine", "name": name},
            },
        }))
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_dcs_machine(
        &self,
        client: &kube::Client,
        machine: &Value,
        pool: &str,
        cp: bool,
        ip: &str,
        host: &str,
        now: &str,
    ) -> Result<()> {
        let name = machine["metadata"]["name"].as_str().unwrap_or_default();
        let mut spec = self.dcs_machine_spec(pool, cp);
        spec["providerID"] = json!(format!("dcs://{name}"));
        let mut labels = machine["metadata"]["labels"].clone();
        if let Some(l) = labels.as_object_mut() {
            l.remove(SET_NAME_LABEL);
        }
        let dcs_machine = create(client, &self.namespace, json!({
            "apiVersion": INFRA_V1BETA1, "kind": "DCSMachine",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [owner(machine, true)]},
            "spec": spec,
        }))
        .await?;
        let gateway = format!("{}.1", ip.rsplit_once('.').expect("dotted").0);
        patch_status(client, &self.namespace, &dcs_machine, json!({
            "ready": true,
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": host}],
            "networkConfig": {"ip": ip, "mask": "24", "gateway": gateway, "dns": "10.0.0.53",
                              "hostname": host, "machineName": host},
            "conditions": [cond("Ready", true, now)],
        }))
        .await
    }
}

/// The current time as a Kubernetes timestamp (RFC 3339, whole seconds).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `(host, port)` of an `https://host:port` URL.
fn endpoint(server: &str) -> Result<(String, u16)> {
    let rest = server.strip_prefix("https://").unwrap_or(server);
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .with_context(|| format!("no port in {server}"))?;
    Ok((host.to_string(), port.parse()?))
}

/// A CAPI v1beta1 condition (`Warning` severity when false, as CAPI sets for a failing node).
fn cond(type_: &str, ok: bool, now: &str) -> Value {
    if ok {
        json!({"type": type_, "status": "True", "lastTransitionTime": now})
    } else {
        json!({"type": type_, "status": "False", "severity": "Warning",
               "reason": "NodeConditionsFailed", "message": "Node condition Ready is False",
               "lastTransitionTime": now})
    }
}

fn owner(obj: &Value, controller: bool) -> Value {
    json!({
        "apiVersion": obj["apiVersion"], "kind": obj["kind"],
        "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
        "controller": controller, "blockOwnerDeletion": true,
    })
}

fn kind_api(client: &kube::Client, ns: &str, obj: &Value) -> Result<Api<DynamicObject>> {
    let api_version = obj["apiVersion"]
        .as_str()
        .context("object without apiVersion")?;
    let kind = obj["kind"].as_str().context("object without kind")?;
    Ok(capi::api(client, ns, api_version, kind))
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("?")
}

/// CAPI's per-object pause annotation: its controllers skip an object that carries it.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";

async fn create(client: &kube::Client, ns: &str, mut obj: Value) -> Result<Value> {
    let what = format!("{} {}", obj["kind"].as_str().unwrap_or("?"), name_of(&obj));
    obj["metadata"]["annotations"][PAUSED_ANNOTATION] = json!("");
    let dynamic: DynamicObject = serde_json::from_value(obj.clone())?;
    let created = kind_api(client, ns, &obj)?
        .create(&PostParams::default(), &dynamic)
        .await
        .with_context(|| format!("creating {what}"))?;
    let mut created = serde_json::to_value(created)?;
    // The create answer of a custom resource carries apiVersion/kind; keep them regardless.
    created["apiVersion"] = obj["apiVersion"].clone();
    created["kind"] = obj["kind"].clone();
    Ok(created)
}

async fn get(client: &kube::Client, ns: &str, obj: &Value) -> Result<Value> {
    let mut got = serde_json::to_value(kind_api(client, ns, obj)?.get(name_of(obj)).await?)?;
    got["apiVersion"] = obj["apiVersion"].clone();
    got["kind"] = obj["kind"].clone();
    Ok(got)
}

async fn patch_status(client: &kube::Client, ns: &str, obj: &Value, status: Value) -> Result<()> {
    kind_api(client, ns, obj)?
        .patch_status(
            name_of(obj),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .with_context(|| format!("writing the status of {} {}", obj["kind"], name_of(obj)))?;
    Ok(())
}

fn machine_status(
    machine: &Value,
    version: &str,
    ip: &str,
    host: &str,
    cp: bool,
    now: &str,
) -> Value {
    let name = name_of(machine);
    let mut conditions: Vec<Value> = [
        "Ready",
        "BootstrapReady",
        "InfrastructureReady",
        "NodeHealthy",
    ]
    .iter()
    .map(|t| cond(t, true, now))
    .collect();
    if cp {
        for t in [
            "APIServerPodHealthy",
            "ControllerManagerPodHealthy",
            "SchedulerPodHealthy",
            "EtcdPodHealthy",
            "EtcdMemberHealthy",
        ] {
            conditions.push(cond(t, true, now));
        }
    }
    json!({
        "phase": "Running",
        "bootstrapReady": true,
        "infrastructureReady": true,
        "observedGeneration": machine["metadata"]["generation"],
        "lastUpdated": now,
        "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": name},
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": host}],
        "nodeInfo": {
            "architecture": "amd64",
            "bootID": format!("boot-{name}"),
            "containerRuntimeVersion": "containerd://1.7.27",
            "kernelVersion": "6.4.0-150600.23.60-default",
            "kubeProxyVersion": version,
            "kubeletVersion": version,
            "machineID": format!("machine-{name}"),
            "operatingSystem": "linux",
            "osImage": "Alauda OS (MicroOS 5.5)",
            "systemUUID": format!("uuid-{name}"),
        },
        "conditions": conditions,
    })
}

/// Machines owned (as controller) by `owner`, or for a MachineDeployment by its MachineSets,
/// found by CAPI's labels.
async fn owned_machines(client: &kube::Client, ns: &str, owner: &Value) -> Result<Vec<Value>> {
    let name = name_of(owner);
    let selector = match owner["kind"].as_str() {
        Some("KubeadmControlPlane") => format!("{CONTROL_PLANE_NAME_LABEL}={name}"),
        Some("MachineDeployment") => format!("{DEPLOYMENT_NAME_LABEL}={name}"),
        Some("MachineSet") => format!("{SET_NAME_LABEL}={name}"),
        other => bail!("no machines are owned by a {other:?}"),
    };
    capi::machine_api(client, ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|m| Ok(serde_json::to_value(m)?))
        .collect()
}

/// Rewrites the replica counters of a KubeadmControlPlane, MachineDeployment or MachineSet
/// from its machines, as CAPI's controller would: every machine is up to date, and a machine
/// is ready (and available) while its node is healthy.
async fn refresh_counters(
    client: &kube::Client,
    ns: &str,
    obj: &Value,
    replicas: u32,
    now: &str,
) -> Result<()> {
    let fresh = get(client, ns, obj).await?;
    let machines = owned_machines(client, ns, obj).await?;
    let ready = machines
        .iter()
        .filter(|m| {
            serde_json::from_value::<upgrade_controller::capi::Machine>((*m).clone())
                .is_ok_and(|m| m.node_healthy())
        })
        .count() as u32;
    let all_ready = ready == replicas;
    let generation = fresh["metadata"]["generation"].clone();
    let status = match obj["kind"].as_str() {
        Some("KubeadmControlPlane") => json!({
            "observedGeneration": generation,
            "selector": format!("{CLUSTER_NAME_LABEL}={},{CONTROL_PLANE_LABEL}",
                fresh["metadata"]["labels"][CLUSTER_NAME_LABEL].as_str().unwrap_or_default()),
            "replicas": machines.len(),
            "updatedReplicas": machines.len(),
            "readyReplicas": ready,
            "unavailableReplicas": replicas.saturating_sub(ready),
            "version": fresh["spec"]["version"],
            "initialized": true,
            "ready": ready > 0,
            "conditions": [
                cond("Ready", all_ready, now), cond("Available", true, now),
                cond("CertificatesAvailable", true, now), cond("MachinesReady", all_ready, now),
                cond("MachinesSpecUpToDate", true, now), cond("Resized", true, now),
                cond("ControlPlaneComponentsHealthy", true, now), cond("EtcdClusterHealthy", true, now),
            ],
        }),
        Some("MachineDeployment") => json!({
            "observedGeneration": generation,
            "selector": selector_string(&fresh["spec"]["selector"]["matchLabels"]),
            "replicas": machines.len(),
            "updatedReplicas": machines.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": replicas.saturating_sub(ready),
            "phase": if all_ready { "Running" } else { "ScalingUp" },
            "conditions": [cond("Ready", all_ready, now), cond("Available", all_ready, now)],
        }),
        Some("MachineSet") => json!({
            "observedGeneration": generation,
            "selector": selector_string(&fresh["spec"]["selector"]["matchLabels"]),
            "replicas": machines.len(),
            "fullyLabeledReplicas": machines.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [cond("Ready", all_ready, now), cond("MachinesCreated", true, now), cond("MachinesReady", all_ready, now), cond("Resized", true, now)],
        }),
        other => bail!("no replica counters on a {other:?}"),
    };
    patch_status(client, ns, obj, status).await
}

fn selector_string(match_labels: &Value) -> String {
    match_labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Sets condition `type_` on the status of `api`'s object `name` as a CAPI controller would:
/// `True`, or `False` with `reason` and `message` (Warning severity); the other conditions stay.
pub async fn set_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    false_because: Option<(&str, &str)>,
) -> Result<()> {
    let obj = serde_json::to_value(
        api.get(name)
            .await
            .with_context(|| format!("reading {name}"))?,
    )?;
    let mut conditions: Vec<Value> = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != type_);
    conditions.push(match false_because {
        None => json!({"type": type_, "status": "True", "lastTransitionTime": now()}),
        Some((reason, message)) => json!({"type": type_, "status": "False", "severity": "Warning",
            "reason": reason, "message": message, "lastTransitionTime": now()}),
    });
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .with_context(|| format!("writing the status of {name}"))?;
    Ok(())
}

/// Marks the node of Machine `machine` healthy or not (conditions `NodeHealthy` and `Ready`),
/// then recounts the ready replicas of whatever owns it (KubeadmControlPlane, or MachineSet and
/// MachineDeployment), as CAPI would on a live cluster.
pub async fn set_node_ready(
    client: &kube::Client,
    ns: &str,
    machine: &str,
    ready: bool,
) -> Result<()> {
    let api = capi::machine_api(client, ns);
    let m = serde_json::to_value(
        api.get(machine)
            .await
            .with_context(|| format!("reading Machine {machine}"))?,
    )?;
    let now = now();
    let mut conditions: Vec<Value> = m["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in ["NodeHealthy", "Ready"] {
        conditions.retain(|c| c["type"] != t);
        conditions.push(cond(t, ready, &now));
    }
    api.patch_status(
        machine,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .with_context(|| format!("writing the status of Machine {machine}"))?;

    let labels = &m["metadata"]["labels"];
    let mut owners = Vec::new();
    if let Some(kcp) = labels[CONTROL_PLANE_NAME_LABEL].as_str() {
        owners.push((CONTROLPLANE_V1BETA1, "KubeadmControlPlane", kcp));
    }
    if let Some(ms) = labels[SET_NAME_LABEL].as_str() {
        owners.push((CLUSTER_V1BETA1, "MachineSet", ms));
    }
    if let Some(md) = labels[DEPLOYMENT_NAME_LABEL].as_str() {
        owners.push((CLUSTER_V1BETA1, "MachineDeployment", md));
    }
    for (api_version, kind, name) in owners {
        let obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
        let obj = get(client, ns, &obj).await?;
        let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
        refresh_counters(client, ns, &obj, replicas, &now).await?;
    }
    Ok(())
}

impl StaticDcsCluster {
    /// Plays CAPI finishing a rollout: every Machine of the control plane takes the
    /// KubeadmControlPlane's `spec.version`, every worker Machine its MachineDeployment's,
    /// their nodes report that kubelet, and the replica counters and `observedGeneration` of
    /// the KubeadmControlPlane, MachineSets and MachineDeployments catch up. (CAPI replaces
    /// machines; here the same ones change, which CAPI's rollout gates cannot tell apart.)
    pub async fn roll_out(&self, client: &kube::Client) -> Result<()> {
        let ns = self.namespace.as_str();
        let now = now();
        let machines = capi::machine_api(client, ns);
        let kcp = get(
            client,
            ns,
            &json!({"apiVersion": CONTROLPLANE_V1BETA1, "kind": "KubeadmControlPlane",
            "metadata": {"name": self.kcp_name()}}),
        )
        .await?;
        let mut owners: Vec<(Value, String, String)> = vec![(
            kcp.clone(),
            format!("{CONTROL_PLANE_NAME_LABEL}={}", self.kcp_name()),
            kcp["spec"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )];
        for (pool, _) in &self.pools {
            let md = get(
                client,
                ns,
                &json!({"apiVersion": CLUSTER_V1BETA1, "kind": "MachineDeployment",
                "metadata": {"name": self.md_name(pool)}}),
            )
            .await?;
            let version = md["spec"]["template"]["spec"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            owners.push((
                md,
                format!("{DEPLOYMENT_NAME_LABEL}={}", self.md_name(pool)),
                version,
            ));
        }
        for (_, selector, version) in &owners {
            for m in machines
                .list(&ListParams::default().labels(selector))
                .await?
                .items
            {
                let name = m.metadata.name.clone().unwrap_or_default();
                machines
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"version": version}})),
                    )
                    .await
                    .with_context(|| format!("moving Machine {name} to {version}"))?;
                machines
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {
                            "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": version},
                            "lastUpdated": now,
                        }})),
                    )
                    .await
                    .with_context(|| format!("writing the status of Machine {name}"))?;
            }
        }
        for (pool, replicas) in &self.pools {
            let ms = json!({"apiVersion": CLUSTER_V1BETA1, "kind": "MachineSet",
                "metadata": {"name": self.machine_set_name(pool)}});
            refresh_counters(client, ns, &ms, *replicas, &now).await?;
        }
        for (obj, _, _) in owners.iter().skip(1) {
            let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
            refresh_counters(client, ns, obj, replicas, &now).await?;
        }
        refresh_counters(client, ns, &kcp, self.cp_replicas, &now).await
    }
}

/// Appends one entry (the next free address of its block) to DCSIpHostnamePool `pool` and
/// returns its IP.
pub async fn add_pool_entry(client: &kube::Client, ns: &str, pool: &str) -> Result<String> {
    let api = capi::api(client, ns, INFRA_V1BETA1, "DCSIpHostnamePool");
    let obj = serde_json::to_value(
        api.get(pool)
            .await
            .with_context(|| format!("reading DCSIpHostnamePool {pool}"))?,
    )?;
    let mut entries = obj["spec"]["pool"].as_array().cloned().unwrap_or_default();
    let last = entries
        .last()
        .context("the pool has no entry to continue from")?
        .clone();
    let last_ip = last["ip"].as_str().context("last entry without ip")?;
    let (prefix, _) = last_ip.rsplit_once('.').context("not an IPv4 address")?;
    let next = entries
        .iter()
        .filter_map(|e| e["ip"].as_str()?.rsplit_once('.')?.1.parse::<u32>().ok())
        .max()
        .unwrap_or(9)
        + 1;
    if next > 254 {
        bail!("address block {prefix}.0/24 of pool {pool} is full");
    }
    let ip = format!("{prefix}.{next}");
    let mut entry = last;
    let host = format!("{pool}-{next}");
    entry["ip"] = json!(ip);
    entry["hostname"] = json!(host);
    entry["machineName"] = json!(host);
    entries.push(entry);
    api.patch(
        pool,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"pool": entries}})),
    )
    .await
    .with_context(|| format!("adding an entry to DCSIpHostnamePool {pool}"))?;
    Ok(ip)
}

fn image_configmap_name(image: &str) -> String {
    let mut h = DefaultHasher::new();
    image.hash(&mut h);
    format!("e2e-dcs-vm-template-{:08x}", h.finish() as u32)
}

/// Registers each DCS VM template name the way the platform does: a ConfigMap in
/// `cpaas-system` labelled `cpaas.io/dcs-vm-template=<name>` (created with the namespace when
/// missing; idempotent). A name that cannot be a label value cannot be registered: error.
pub async fn stage_images(client: &kube::Client, names: &[&str]) -> Result<()> {
    let ns = IMAGE_CONFIGMAP_NAMESPACE;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await?.is_none() {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        match namespaces.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("creating namespace cpaas-system"),
        }
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for image in names {
        if !valid_label_value(image) {
            bail!("{image:?} cannot be a label value, so no ConfigMap can register it");
        }
        let name = image_configmap_name(image);
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": {
                VM_TEMPLATE_LABEL: image, FIXTURE_LABEL: "dcs-image",
            }},
            "data": {"vmImageVersion": image},
        });
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .with_context(|| format!("staging DCS VM template {image}"))?;
    }
    Ok(())
}

/// Removes what [`stage_images`] registered for these names (absent ones are fine).
pub async fn unstage_images(client: &kube::Client, names: &[&str]) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), IMAGE_CONFIGMAP_NAMESPACE);
    for image in names {
        match api
            .delete(&image_configmap_name(image), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("unstaging {image}")),
        }
    }
    Ok(())
}

/// Kubernetes label value syntax (≤ 63 characters, alphanumerics at both ends, `-_.` inside).
fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// Deletes a namespace holding static clusters and waits (up to a minute) until it is gone.
/// CAPI's controllers put their finalizers on the objects even while the Cluster is paused,
/// and, paused, never remove them; so once the namespace deletion marks those objects deleted,
/// their finalizers are removed here, as CAPI would after tearing the machines down.
pub async fn delete_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("deleting namespace {ns}")),
    }
    let kinds = [
        ("upgrade.cpaas.io/v1alpha1", "UpgradeRequest"),
        (CLUSTER_V1BETA1, "MachinePool"),
        (CLUSTER_V1BETA1, "Machine"),
        (CLUSTER_V1BETA1, "MachineSet"),
        (CLUSTER_V1BETA1, "MachineDeployment"),
        (CONTROLPLANE_V1BETA1, "KubeadmControlPlane"),
        (CLUSTER_V1BETA1, "Cluster"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if namespaces.get_opt(ns).await?.is_none() {
            return Ok(());
        }
        for (api_version, kind) in kinds {
            let api = capi::api(client, ns, api_version, kind);
            let objects = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                // A kind whose CRD this test did not install (UpgradeRequest in CAPI-only tests).
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {kind} in {ns}")),
            };
            for obj in objects {
                let deleting = obj.metadata.deletion_timestamp.is_some();
                let has_finalizers = obj
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty());
                if deleting && has_finalizers {
                    let name = obj.metadata.name.clone().unwrap_or_default();
                    let patch = json!({"metadata": {"finalizers": null}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("releasing {kind} {name}"));
                        }
                    }
                }
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("namespace {ns} still exists a minute after its deletion");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
