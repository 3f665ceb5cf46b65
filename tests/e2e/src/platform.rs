//! The platform around a test cluster: a namespace of its own holding the global cluster's and
//! the test cluster's ClusterVersionShadows, served by a stand-in Cluster Version Operator
//! that only looks at that namespace. Tests running in parallel never share a cvsh.
//!
//! The test's Clusters live in the test namespace, not in the platform namespace, so the
//! controller runs with `--cvsh-mapping namespaced-name`: Cluster `<ns>/<name>` has the cvsh
//! `<ns>.<name>` ([`Platform::cvsh_name`]).

use kube::api::{Api, DynamicObject};
use serde_json::Value;

use crate::cvo::{self, StandInCvo};

/// The global cluster's cvsh name (the controller's default `--global-cluster`).
pub const GLOBAL: &str = "global";

/// A per-test platform namespace and its stand-in CVO (killed on drop).
pub struct Platform {
    pub namespace: String,
    /// The namespace of the test's Clusters.
    pub owner_ns: String,
    pub cvo: StandInCvo,
}

impl Platform {
    /// Creates `<owner_ns>-platform` with cvsh `global` installed at `global_version` and the
    /// cvsh of Cluster `<owner_ns>/<cluster>` at `cluster_version`, and starts a stand-in CVO
    /// there (1 s per stage).
    pub async fn start(
        client: &kube::Client,
        owner_ns: &str,
        cluster: &str,
        cluster_version: &str,
        global_version: &str,
    ) -> Self {
        let namespace = format!("{owner_ns}-platform");
        cvo::ensure_namespace(client, &namespace)
            .await
            .expect("creating the platform namespace");
        cvo::set_control_in(client, &namespace, "stage-seconds", Some("1"))
            .await
            .expect("configuring the stand-in CVO");
        cvo::create_cvsh_in(client, &namespace, GLOBAL, global_version)
            .await
            .expect("creating the global cluster's cvsh");
        let shadow = format!("{owner_ns}.{cluster}");
        cvo::create_cvsh_in(client, &namespace, &shadow, cluster_version)
            .await
            .expect("creating the cluster's cvsh");
        let cvo = StandInCvo::start(&namespace);
        let platform = Self {
            namespace,
            owner_ns: owner_ns.to_string(),
            cvo,
        };
        // The stand-in fills in both statuses on its first passes.
        for name in [GLOBAL, cluster] {
            let start = std::time::Instant::now();
            loop {
                let v = platform.cvsh(client, name).await;
                if v["status"]["current"]["version"].is_string()
                    && v["status"]["preflight"]["checks"].is_array()
                {
                    break;
                }
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(60),
                    "the stand-in CVO did not initialise cvsh {name}; log: {}",
                    platform.cvo.log.display()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        platform
    }

    /// Controller flags pointing it at this platform namespace.
    pub fn controller_args(&self) -> Vec<String> {
        vec![
            "--cvsh-namespace".into(),
            self.namespace.clone(),
            "--cvsh-mapping".into(),
            "namespaced-name".into(),
        ]
    }

    /// The cvsh name of the test's Cluster `cluster` (`global` stays `global`).
    pub fn cvsh_name(&self, cluster: &str) -> String {
        if cluster == GLOBAL {
            GLOBAL.to_string()
        } else {
            format!("{}.{cluster}", self.owner_ns)
        }
    }

    /// Creates one more cvsh in the platform namespace, for Cluster `<owner_ns>/<cluster>`.
    pub async fn add_cluster(&self, client: &kube::Client, cluster: &str, version: &str) {
        cvo::create_cvsh_in(client, &self.namespace, &self.cvsh_name(cluster), version)
            .await
            .expect("creating a cvsh");
    }

    pub fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        cvo::cvsh_api(client, &self.namespace)
    }

    /// The cvsh of the test's Cluster `cluster` (or `global`) as JSON.
    pub async fn cvsh(&self, client: &kube::Client, cluster: &str) -> Value {
        let name = self.cvsh_name(cluster);
        let obj = self
            .api(client)
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("reading cvsh {}/{name}: {e}", self.namespace));
        serde_json::to_value(obj).expect("cvsh as JSON")
    }

    /// Sets (or clears) a stand-in control key (`fail-preflight.<cvsh>`, `stall.<cvsh>`).
    pub async fn control(&self, client: &kube::Client, key: &str, value: Option<&str>) {
        cvo::set_control_in(client, &self.namespace, key, value)
            .await
            .expect("setting a stand-in CVO control key");
    }

    /// Deletes the platform namespace (best effort).
    pub async fn delete(&self, client: &kube::Client) {
        let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
        let _ = api.delete(&self.namespace, &Default::default()).await;
    }
}
