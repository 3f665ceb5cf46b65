//! `stand-in-cvo`: a TEST DOUBLE of the platform's Cluster Version Operator, for the end-to-end
//! tests and the demo only; never shipped, never installed on a platform cluster. Every 300 ms
//! (`--poll-ms`) it
//! reads the test controls (ConfigMap `stand-in-cvo`) and every ClusterVersionShadow in its
//! namespace, and writes the status the CVO would (behaviour and status shape:
//! `e2e::cvo`, DOMAIN.md §2) through the status subresource, only when it changed.
//!
//! ```sh
//! KUBECONFIG=... stand-in-cvo [--namespace cpaas-system] [--stage-seconds 1] \
//!     [--api-version cvo.cpaas.io/v1alpha1] [--poll-ms 300]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::cvo::{self, Skip};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

struct Args {
    namespace: String,
    stage_seconds: u64,
    api_version: String,
    /// Time between passes (default 300 ms; the scale benchmark, serving a thousand cvsh,
    /// uses more so the stand-in does not load the API server it measures).
    poll: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        namespace: cvo::NAMESPACE.into(),
        stage_seconds: 1,
        api_version: cvo::API_VERSION.into(),
        poll: Duration::from_millis(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--namespace" => args.namespace = value()?,
            "--stage-seconds" => {
                let v = value()?;
                args.stage_seconds = v
                    .parse()
                    .with_context(|| format!("--stage-seconds {v:?} is not a number"))?;
            }
            "--api-version" => args.api_version = value()?,
            "--poll-ms" => {
                let v = value()?;
                args.poll = Duration::from_millis(
                    v.parse()
                        .with_context(|| format!("--poll-ms {v:?} is not a number"))?,
                );
            }
            "-h" | "--help" => {
                println!(
                    "usage: stand-in-cvo [--namespace {}] [--stage-seconds 1] [--api-version {}] [--poll-ms 300]\n\
                     A test double of the platform's Cluster Version Operator; uses $KUBECONFIG.",
                    cvo::NAMESPACE,
                    cvo::API_VERSION
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !args.api_version.contains('/') {
        bail!("--api-version {:?} must be GROUP/VERSION", args.api_version);
    }
    Ok(args)
}

fn log(line: impl std::fmt::Display) {
    eprintln!("{} stand-in-cvo: {line}", cvo::time(Timestamp::now()));
}

/// One line saying what a status write changed the cvsh to.
fn summary(status: &Value) -> String {
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| {
                format!(
                    "{t}={}({})",
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default()
    };
    let stages: Vec<String> = status["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s["name"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "current={} desired={} stages=[{}] {} {} {} {}",
        status["current"]["version"].as_str().unwrap_or("-"),
        status["desired"]["version"].as_str().unwrap_or("-"),
        stages.join(","),
        cond("PreflightReady"),
        cond("Ready"),
        cond("Reconciling"),
        cond("Stalled"),
    )
}

struct StandIn {
    args: Args,
    cvsh: Api<DynamicObject>,
    controls: Api<ConfigMap>,
    /// Objects already reported as skipped (reported once, not every pass).
    skipped: BTreeSet<String>,
    last_problem: Option<String>,
}

impl StandIn {
    async fn pass(&mut self) -> Result<()> {
        let data: BTreeMap<String, String> = self
            .controls
            .get_opt(cvo::CONTROL_CONFIGMAP)
            .await
            .context("reading the control ConfigMap")?
            .and_then(|cm| cm.data)
            .unwrap_or_default();
        let list = self
            .cvsh
            .list(&ListParams::default())
            .await
            .context("listing ClusterVersionShadows")?;
        for obj in list.items {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let (knobs, problem) = cvo::knobs(&data, &name, self.args.stage_seconds);
            if problem != self.last_problem {
                if let Some(p) = &problem {
                    log(p);
                }
                self.last_problem = problem;
            }
            let value = serde_json::to_value(&obj)?;
            let new = match cvo::next_status(&value, &knobs, Timestamp::now()) {
                Ok(s) => s,
                Err(Skip::NoInstalledVersion) => {
                    if self.skipped.insert(name.clone()) {
                        log(format_args!(
                            "skipping {name}: no status.current and no {} annotation",
                            cvo::INSTALLED_VERSION_ANNOTATION
                        ));
                    }
                    continue;
                }
            };
            self.skipped.remove(&name);
            let old = value.get("status").cloned().unwrap_or(Value::Null);
            if old == new {
                continue;
            }
            let patch = json!({"status": cvo::merge_patch(&old, &new)});
            match self
                .cvsh
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => log(format_args!("{name}: {}", summary(&new))),
                // Deleted meanwhile: nothing to do.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => log(format_args!("{name}: writing status failed: {e}")),
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let client = kube::Client::try_default()
        .await
        .context("building a client from $KUBECONFIG")?;
    let resource = cvo::cvsh_resource(&args.api_version);
    log(format_args!(
        "TEST DOUBLE of the platform CVO: serving {} in namespace {} (stage-seconds {}, controls in ConfigMap {})",
        args.api_version,
        args.namespace,
        args.stage_seconds,
        cvo::CONTROL_CONFIGMAP
    ));
    let mut stand_in = StandIn {
        cvsh: Api::namespaced_with(client.clone(), &args.namespace, &resource),
        controls: Api::namespaced(client, &args.namespace),
        args,
        skipped: BTreeSet::new(),
        last_problem: None,
    };
    let mut last_error = None;
    loop {
        let error = stand_in.pass().await.err().map(|e| format!("{e:#}"));
        if error.is_some() && error != last_error {
            log(format_args!(
                "pass failed (retrying): {}",
                error.as_deref().unwrap_or("")
            ));
        }
        last_error = error;
        tokio::select! {
            _ = tokio::time::sleep(stand_in.args.poll) => {}
            _ = tokio::signal::ctrl_c() => {
                log("interrupted, exiting");
                return Ok(());
            }
        }
    }
}
