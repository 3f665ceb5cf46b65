//! One test's world on the test control plane, for the preflight and hardening suites: a
//! static DCS cluster (`crate::dcs`), its own matrix (with DCS image names unique to the test,
//! so image registration never leaks between tests), its platform namespace with a stand-in
//! CVO, and the controller pointed at both.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, CheckState, Phase, StepState, UpgradeRequest};
use upgrade_controller::version::ReleaseVersion;

use crate::capi::{self, INFRA_V1BETA1};
use crate::dcs::{self, StaticDcsCluster};
use crate::harness::{self, TestNamespace};
use crate::kube_ovn::{self, StandInKubeOvn};
use crate::platform::Platform;
use crate::project::{self, Controller};

/// The static cluster's name in every site.
pub const CLUSTER: &str = "dcs";
/// How long a site waits for a request to reach a state.
pub const WAIT: Duration = Duration::from_secs(120);

/// The matrix row a static cluster starts from.
pub struct Row {
    pub dv: &'static str,
    pub k8s: &'static str,
    pub coredns: &'static str,
    pub etcd: &'static str,
    /// The row's Kube-OVN chart: what the cluster runs, and its Cluster annotation says.
    pub kube_ovn_chart: &'static str,
    /// The DCS provider installed on the management cluster for a cluster of this row: one
    /// that pairs with the next hop's images (DOMAIN.md §1: ACP ≥ 4.3.2 images with provider
    /// ≥ v1.0.21 and the reverse).
    pub dcs_provider: &'static str,
}

pub const ROW_4_2_5: Row = Row {
    dv: "4.2.5",
    k8s: "v1.33.7-4",
    coredns: "1.14.3-v4.2.11",
    etcd: "v3.5.28-260421",
    kube_ovn_chart: "v4.2.33",
    // Full source: the next hop (4.3.2) is moved by the Cluster annotation alone.
    dcs_provider: "v1.0.22",
};
pub const ROW_4_1_6: Row = Row {
    dv: "4.1.6",
    k8s: "v1.32.11-2",
    coredns: "1.12.4-v4.1.5",
    etcd: "v3.5.25-251215",
    kube_ovn_chart: "v4.1.32",
    // Legacy: the next hop's images (4.2.5) need a provider below v1.0.21, whose Kube-OVN
    // AppRelease also gets its targetRevision patched by upgrade-controller.
    dcs_provider: "v1.0.20",
};

/// One test's world: a static DCS cluster, its own matrix (with DCS image names unique to the
/// test, so image registration never leaks between tests), its platform namespace with a
/// stand-in CVO, and the controller pointed at both. [`Site::finish`] cleans up after a test
/// that passed; a test that fails (panics) is cleaned up on drop.
pub struct Site {
    /// First, so a failed test's controller is killed (on drop) before its namespaces go.
    pub controller: Option<Controller>,
    pub client: kube::Client,
    /// The test's namespace; its platform namespace and matrix are deleted with it.
    pub ns: TestNamespace,
    pub cluster: StaticDcsCluster,
    pub platform: Platform,
    /// The static cluster is Kube-OVN (fixture `static-dcs/dcs-cluster.yaml`): the platform's
    /// side of its `cni-kube-ovn` AppRelease, in the platform namespace.
    pub kube_ovn: StandInKubeOvn,
}

impl Site {
    pub async fn new(
        prefix: &str,
        from: &Row,
        global: &str,
        tweak: impl FnOnce(&mut Site),
    ) -> Site {
        Self::with_cluster(prefix, CLUSTER, from, global, tweak).await
    }

    /// [`Site::new`] with a static cluster named `name`.
    pub async fn with_cluster(
        prefix: &str,
        name: &str,
        from: &Row,
        global: &str,
        tweak: impl FnOnce(&mut Site),
    ) -> Site {
        let client = harness::client().await;
        project::install(&client).await;
        dcs::install_crds(&client).await.unwrap();
        let mut ns = harness::namespace(&client, prefix).await;
        let matrix = ns.to_string();
        ns.delete_matrix_with(&matrix);
        // The test's matrix: the sample rows with DCS image names of this test.
        let mut matrix = project::sample_matrix();
        matrix["metadata"] = json!({"name": ns.name()});
        for row in matrix["spec"]["rows"].as_array_mut().unwrap() {
            let dv = row["distributionVersion"].as_str().unwrap().to_string();
            row["images"] = json!({"dcs": format!("{ns}-{dv}")});
        }
        crate::testenv::apply(&client, &[matrix]).await.unwrap();
        let cluster = StaticDcsCluster {
            cp_version: from.k8s.into(),
            vm_template: format!("{ns}-{}", from.dv),
            coredns_tag: from.coredns.into(),
            etcd_tag: from.etcd.into(),
            pools: vec![("md-a".into(), 2)],
            ip_pool_spare: 1,
            ..StaticDcsCluster::new(name, &ns)
        };
        let platform = Platform::start(&client, &ns, name, from.dv, global).await;
        ns.delete_with(&platform.namespace);
        // The management cluster's DCS provider, and the workload cluster's Kube-OVN.
        kube_ovn::create_with_status(
            &client,
            &platform.namespace,
            kube_ovn::provider_release(&platform.namespace, from.dcs_provider),
        )
        .await;
        let legacy = ReleaseVersion::parse(from.dcs_provider).unwrap()
            < ReleaseVersion::parse("v1.0.22").unwrap();
        let kube_ovn = StandInKubeOvn::start(
            &client,
            &ns,
            name,
            &platform.namespace,
            from.kube_ovn_chart,
            legacy,
        )
        .await;
        let mut site = Site {
            controller: None,
            client,
            ns,
            cluster,
            platform,
            kube_ovn,
        };
        tweak(&mut site);
        site.cluster.create(&site.client).await.unwrap();
        // The chart the cluster was installed with, as the provider records it.
        capi::api(&site.client, &site.ns, capi::CLUSTER_V1BETA1, "Cluster")
            .patch(
                &site.cluster.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    upgrade_controller::decide::kube_ovn::VERSION_ANNOTATION: from.kube_ovn_chart}}})),
            )
            .await
            .unwrap();
        site
    }

    pub fn image(&self, dv: &str) -> String {
        format!("{}-{dv}", self.ns)
    }

    pub async fn stage(&self, dv: &str) {
        dcs::stage_images(&self.client, &[&self.image(dv)])
            .await
            .unwrap();
    }

    pub fn start_controller(&mut self) {
        let mut args = self.platform.controller_args();
        // The workload cluster is the test control plane: its Kube-OVN AppRelease lives in
        // this test's platform namespace, not in the shared cpaas-system.
        args.extend([
            "--kube-ovn-namespace".into(),
            self.platform.namespace.clone(),
        ]);
        self.controller = Some(Controller::start_with(&self.ns, &args));
    }

    /// A request for this cluster to 4.3 from this test's matrix. The ResourcePatches of the
    /// shared control plane (the review test creates some) are acknowledged wholesale, except
    /// where a test sets its own acknowledgements.
    pub async fn request(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "clusterName": self.cluster.name, "targetVersion": "4.3", "matrixRef": self.ns.name(),
            "acknowledgements": {"modifications": ["*"]},
        });
        merge(&mut spec, extra);
        let ur: UpgradeRequest = serde_json::from_value(json!({
            "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.requests()
            .create(&PostParams::default(), &ur)
            .await
            .expect("creating the UpgradeRequest");
    }

    pub fn requests(&self) -> Api<UpgradeRequest> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&UpgradeRequest) -> bool,
    ) -> UpgradeRequest {
        let start = Instant::now();
        loop {
            let ur = self.requests().get(name).await.unwrap();
            if done(&ur) {
                return ur;
            }
            assert!(
                start.elapsed() < WAIT,
                "{name}: not {what} after {WAIT:?}; status: {}\ncontroller log: {}",
                serde_json::to_string_pretty(&ur.status).unwrap(),
                self.controller
                    .as_ref()
                    .map(|c| c.log.display().to_string())
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until `name` is held by preflight with exactly `check` blocking, and returns
    /// that check's message.
    pub async fn blocked_by(&self, name: &str, check: CheckName) -> String {
        let ur = self
            .wait(name, &format!("blocked by {check:?}"), |ur| {
                ur.status.as_ref().is_some_and(|s| {
                    s.phase == Some(Phase::Preflight)
                        && s.preflight.as_ref().is_some_and(|p| {
                            p.checks
                                .iter()
                                .any(|c| c.name == check && c.state == CheckState::Failed)
                        })
                })
            })
            .await;
        let status = ur.status.unwrap();
        let pf = status.preflight.unwrap();
        let blocking: Vec<_> = pf
            .checks
            .iter()
            .filter(|c| matches!(c.state, CheckState::Failed | CheckState::Unknown))
            .collect();
        assert_eq!(
            blocking.iter().map(|c| c.name).collect::<Vec<_>>(),
            vec![check],
            "only {check:?} blocks: {blocking:#?}"
        );
        let cond = status
            .conditions
            .iter()
            .find(|c| c.type_ == "PreflightPassed")
            .expect("PreflightPassed condition");
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason, format!("{check:?}"));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason, "PreflightFailed");
        let message = blocking[0].message.clone();
        eprintln!("{}: {check:?}: {message}", self.ns);
        message
    }

    /// Nothing was written: no field of this controller on the KCP, the MachineDeployments or
    /// the cluster's cvsh, no new machine template, versions and desired version unchanged.
    pub async fn assert_untouched(&self) {
        // After a complete reconcile of every request, whatever it would write is written.
        if let Some(c) = &self.controller {
            c.settle(&self.client, &self.ns).await;
        }
        let kcp = self.kcp().await;
        assert_eq!(kcp["spec"]["version"], self.cluster.cp_version.as_str());
        let mut objects = vec![kcp];
        for md in capi::md_api(&self.client, &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(serde_json::to_value(md).unwrap());
        }
        let cvsh = self.platform.cvsh(&self.client, &self.cluster.name).await;
        assert!(
            cvsh["spec"]["desiredUpdate"]["version"].is_null(),
            "cvsh was asked for {}",
            cvsh["spec"]["desiredUpdate"]["version"]
        );
        objects.push(cvsh);
        objects.iter().for_each(crate::assert::no_field_of_ours);
        let templates = capi::api(&self.client, &self.ns, INFRA_V1BETA1, "DCSMachineTemplate")
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(
            templates.items.len(),
            1 + self.cluster.pools.len(),
            "no template was cloned"
        );
    }

    pub async fn kcp(&self) -> Value {
        serde_json::to_value(
            capi::kcp_api(&self.client, &self.ns)
                .get(&self.cluster.kcp_name())
                .await
                .unwrap(),
        )
        .unwrap()
    }

    /// The request went all the way: Phase 1 done through the stand-in CVO, then the first
    /// hop's KubeadmControlPlane write with a template cloned from the row's image.
    pub async fn assert_proceeds(&self, name: &str, k8s: &str, dv: &str) {
        let start = Instant::now();
        loop {
            if self.kcp().await["spec"]["version"] == k8s {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "the KubeadmControlPlane never moved to {k8s}; request status: {}",
                serde_json::to_string_pretty(&self.requests().get(name).await.unwrap().status)
                    .unwrap()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let kcp = self.kcp().await;
        let template = kcp["spec"]["machineTemplate"]["infrastructureRef"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let t = capi::api(&self.client, &self.ns, INFRA_V1BETA1, "DCSMachineTemplate")
            .get(&template)
            .await
            .unwrap();
        let t = serde_json::to_value(t).unwrap();
        assert_eq!(
            t["spec"]["template"]["spec"]["vmTemplateName"],
            self.image(dv).as_str()
        );
        let ur = self.requests().get(name).await.unwrap();
        let ext = ur.status.unwrap().aligned_extensions.unwrap();
        assert_eq!(ext.state, Some(StepState::Succeeded));
        assert!(
            self.platform.cvsh(&self.client, &self.cluster.name).await["status"]["current"]["version"]
                == "4.3.2"
        );
    }

    /// The end of a test that passed: the controller stopped, the requests, images, cluster
    /// (waiting until the static cluster is gone) and both namespaces deleted. A test that
    /// fails is cleaned up by the drops of [`Controller`] and [`TestNamespace`].
    pub async fn finish(mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
        for ur in self.requests().list(&ListParams::default()).await.unwrap() {
            let _ = self
                .requests()
                .delete(&ur.metadata.name.unwrap(), &DeleteParams::default())
                .await;
        }
        let images: Vec<String> = ["4.1.6", "4.2.5", "4.3.2"]
            .iter()
            .map(|dv| self.image(dv))
            .collect();
        let _ = dcs::unstage_images(
            &self.client,
            &images.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        dcs::delete_namespace(&self.client, &self.ns).await.unwrap();
        self.ns.finish(&self.client).await;
    }
}

/// Deep-merges `extra` into `base` (objects key by key, anything else replaced).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// The cluster-scoped OSSupportMatrices.
pub fn matrix_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("upgrade.cpaas.io", "v1alpha1", "OSSupportMatrix"),
            "ossupportmatrices",
        ),
    )
}
