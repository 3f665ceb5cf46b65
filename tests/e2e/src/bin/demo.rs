//! `make demo`: the main job end to end on the local test control plane. Brings the control
//! plane up (or reuses it), creates an in-memory workload cluster at ACP 4.0 (Kubernetes
//! v1.31.14-2: 3 control-plane machines, 2 pools of 2 workers), shows the plan to 4.3, then runs
//! upgrade-controller and follows the UpgradeRequest until the cluster is at 4.3. Then a
//! Kube-OVN cluster's first hop: a static DCS cluster at 4.2.5, whose plan moves Kube-OVN to
//! the row's chart (the platform's AppRelease reaching Success) before the control plane.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::capi;
use e2e::harness;
use e2e::platform::{GLOBAL, Platform};
use e2e::project::{self, Controller};
use e2e::site::{ROW_4_2_5, Site};
use kube::api::{Api, PostParams};
use serde_json::json;
use upgrade_controller::api::{Phase, UpgradeRequest, WorkerStrategy};
use upgrade_controller::preview;

const START: &str = "v1.31.14-2";

#[tokio::main]
async fn main() -> Result<()> {
    let t0 = Instant::now();
    let env = harness::env();
    eprintln!(
        "== test control plane at {} (KUBECONFIG={})",
        env.server,
        env.kubeconfig.display()
    );
    let client = harness::client().await;
    project::install(&client).await;
    let ns = harness::namespace(&client, "demo").await.keep();

    eprintln!(
        "== creating in-memory cluster {ns}/demo at {START}: 3 control-plane machines, pools a and b with 2 workers each"
    );
    let objects =
        capi::in_memory_cluster("demo", START, "v131", 3, &[("pool-a", 2), ("pool-b", 2)]);
    capi::create_all(&client, &ns, &objects).await?;
    let took = capi::wait_done("control plane", Duration::from_secs(300), || {
        capi::kcp_rollout_pending(&client, &ns, "demo-cp", START)
    })
    .await?;
    for pool in ["demo-pool-a", "demo-pool-b"] {
        capi::wait_done(pool, Duration::from_secs(300), || {
            capi::md_rollout_pending(&client, &ns, pool, START)
        })
        .await?;
    }
    eprintln!("   cluster running after {took:?}");

    // The platform around it: the global cluster already at 4.3.2 and this cluster at 4.0.11,
    // each with its ClusterVersionShadow, served by the stand-in Cluster Version Operator (a
    // test double of the platform's, which is not public).
    let platform = Platform::start(&client, &ns, "demo", "4.0.11", "4.3.2").await;
    eprintln!(
        "== platform: ClusterVersionShadows {ns}-platform/{{global,demo}} at 4.3.2 / 4.0.11, stand-in CVO log {}",
        platform.cvo.log.display()
    );

    // The same preview `upgrade-controller plan --cluster demo -n <ns> --target 4.3` prints.
    let ur: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "to-4-3", "namespace": ns},
        "spec": {"clusterName": "demo", "targetVersion": "4.3", "workers": {"maxConcurrentPools": 2}},
    }))?;
    let cvsh = upgrade_controller::platform::CvshConfig::new(
        upgrade_controller::platform::DEFAULT_CVSH_API_VERSION,
        &platform.namespace,
        GLOBAL,
        upgrade_controller::platform::CvshMapping::NamespacedName,
    )
    .map_err(anyhow::Error::msg)?;
    let obs =
        upgrade_controller::observe::snapshot(&client, &ur, Default::default(), &cvsh).await?;
    let matrix = obs.matrix.clone().context("sample matrix missing")?;
    let steps = preview::preview(&obs, &matrix.spec.rows, "4.3", WorkerStrategy::EveryHop)?;
    eprintln!("== plan to 4.3:\n{}", preview::table(&steps));

    Api::<UpgradeRequest>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ur)
        .await?;
    let controller = Controller::start_with(&ns, &platform.controller_args());
    eprintln!(
        "== upgrade-controller running (log: {})",
        controller.log.display()
    );
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let mut last = String::new();
    let mut preflight_shown = false;
    let mut status_shown = false;
    loop {
        let ur = api.get("to-4-3").await?;
        let status = ur.status.unwrap_or_default();
        if !preflight_shown && let Some(pf) = &status.preflight {
            println!("preflight ({}):", pf.scope);
            for c in &pf.checks {
                println!(
                    "  {:<30} {:<8} {}",
                    format!("{:?}", c.name),
                    format!("{:?}", c.state),
                    c.message
                );
            }
            preflight_shown = true;
        }
        if status.phase.is_none() || !preflight_shown {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if last.is_empty() {
            println!(
                "{:<20} {:<6} {:<6} {:<7} MESSAGE",
                "PHASE", "STEP", "READY", "ELAPSED"
            );
        }
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let line = format!(
            "{:<20} {:<6} {:<6}",
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            status.progress.clone().unwrap_or_default(),
            ready.map(|c| c.status.clone()).unwrap_or_default(),
        );
        let message = ready.map(|c| c.message.clone()).unwrap_or_default();
        if line.clone() + &message != last {
            println!(
                "{line} {:<7} {message}",
                format!("{}s", started.elapsed().as_secs())
            );
            last = line + &message;
        }
        // Once, mid-upgrade: what an operator sees with `upgrade-controller status`.
        if !status_shown
            && status
                .plan
                .get(2)
                .is_some_and(|s| s.state == upgrade_controller::api::StepState::InProgress)
        {
            status_shown = true;
            let out = std::process::Command::new(project::binary(
                "upgrade-controller",
                "upgrade-controller",
            ))
            .args(["status", "to-4-3", "-n", &ns])
            .env("KUBECONFIG", &env.kubeconfig)
            .output()?;
            println!(
                "\n$ upgrade-controller status to-4-3 -n {ns}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        match status.phase {
            Some(Phase::Succeeded) => break,
            Some(Phase::Stalled) => bail!("the upgrade stalled: {message}"),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(1200) {
            bail!("the upgrade did not finish within 20 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("== done in {:?}", started.elapsed());
    kube_ovn_hop().await?;
    eprintln!(
        "== whole demo {:?}. Inspect the first cluster with:",
        t0.elapsed()
    );
    eprintln!("   export KUBECONFIG={}", env.kubeconfig.display());
    eprintln!(
        "   {} get upgraderequests,kubeadmcontrolplanes,machinedeployments,machines -n {ns}",
        env.kubectl().display()
    );
    eprintln!("   make testenv-down   # when finished");
    Ok(())
}

/// A Kube-OVN cluster (static DCS, `DCSCluster.spec.networkType: kube-ovn`) at 4.2.5 to
/// 4.3.2, until its control plane is written: the plan's KubeOvn step goes first, and the
/// stand-in of the platform's AppRelease operator walks `cni-kube-ovn` to the row's chart.
/// The static cluster has no machines to roll, so the demo stops at the KCP write and
/// deletes it.
async fn kube_ovn_hop() -> Result<()> {
    eprintln!(
        "\n== a Kube-OVN cluster: static DCS cluster at ACP 4.2.5 (Kubernetes 1.33) to 4.3.2; Kube-OVN moves first"
    );
    let mut site = Site::new("demo-ovn", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    site.request("up", json!({})).await;
    site.start_controller();
    let started = Instant::now();
    let mut shown = Vec::new();
    let ur = loop {
        let ur = site.requests().get("up").await?;
        let status = ur.status.clone().unwrap_or_default();
        for step in &status.plan {
            let line = format!(
                "   step {}/{} {:<12} {:<11} {:?}{}",
                step.index + 1,
                status.plan.len(),
                format!("{:?}", step.kind),
                step.kubernetes_version,
                step.state,
                step.kube_ovn_chart
                    .as_ref()
                    .map(|c| format!(" (chart {c})"))
                    .unwrap_or_default()
            );
            if !shown.contains(&line) {
                println!("{:>4}s {line}", started.elapsed().as_secs());
                shown.push(line);
            }
        }
        let kcp_written = status.plan.get(1).is_some_and(|s| {
            s.kind == upgrade_controller::api::PlanStepKind::ControlPlane
                && s.state != upgrade_controller::api::StepState::Pending
        });
        if kcp_written {
            break ur;
        }
        if status.phase == Some(Phase::Stalled) {
            bail!(
                "the Kube-OVN cluster's upgrade stalled: {:?}",
                status.conditions
            );
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the Kube-OVN step did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let history = site.kube_ovn.history.lock().unwrap().clone();
    println!("   cni-kube-ovn AppRelease phases (the stand-in operator): {history:?}");
    let kcp = site.kcp().await;
    println!(
        "   then KubeadmControlPlane {} spec.version = {} ({:?} after the request)",
        kcp["metadata"]["name"].as_str().unwrap_or_default(),
        kcp["spec"]["version"].as_str().unwrap_or_default(),
        started.elapsed()
    );
    let plan = ur.status.unwrap_or_default().plan;
    if plan.first().map(|s| s.kind) != Some(upgrade_controller::api::PlanStepKind::KubeOvn) {
        bail!("the plan did not start with the Kube-OVN step: {plan:?}");
    }
    site.finish().await;
    Ok(())
}
