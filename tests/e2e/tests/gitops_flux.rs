//! The GitOps modes against the real Flux kustomize-controller (issue 10, "What it must show"):
//! an in-memory cluster whose KubeadmControlPlane and MachineDeployment Flux applies from an
//! artifact the test publishes ([`e2e::gitops::GitCluster`]), so Flux owns their version
//! fields, upgraded from ACP 4.0 (Kubernetes 1.31) to 4.3 (1.34) by an UpgradeRequest.
//!
//! - Handoff: the test plays the person who commits exactly what `status.declareInGit` asks;
//!   Flux applies each commit and the upgrade goes on hop by hop, never written by the
//!   controller; a commit skipping a minor is refused by the version guard and Flux reports it.
//! - Direct without a protection: blocked by GitOpsSafe with the fix, nothing written.
//! - Direct with `kustomize.toolkit.fluxcd.io/ssa: IfNotPresent` in Git: three hops while Flux
//!   reconciles during every step and puts nothing back; after hop 1 a commit dropping the
//!   annotation (Git still at 1.31) is refused by the version guard, the control plane is not
//!   rolled back, the request shows Flux's refusal (`GitOpsSynced=False`), and once the
//!   annotation is back the upgrade completes.
//! - Direct with the Kustomization's `spec.ignore`: Flux server-side dry-runs the whole Git
//!   object, ignored paths included, before it strips them, so with the version guard every
//!   reconcile after the first write is refused. Nothing is put back and the upgrade
//!   completes; the request shows the refusal until Git declares what `status.declareInGit`
//!   lists.

use std::time::{Duration, Instant};

use e2e::engine::{self, Write};
use e2e::gitops::{self, GitCluster};
use e2e::guard::VersionGuard;
use e2e::harness::{self, TestNamespace};
use e2e::platform::Platform;
use e2e::project::{self, Controller, create_request};
use e2e::{assert, audit, capi};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use upgrade_controller::api::{
    CheckName, CheckState, GitOpsTool, Phase, StepState, UpgradeRequest,
};

const START: &str = "v1.31.14-2";
/// A minor below [`START`], which the version guard refuses.
const BELOW_START: &str = "v1.30.14";
/// The Kubernetes version of each hop to the 4.3 row.
const HOPS: [&str; 3] = ["v1.32.11-2", "v1.33.7-4", "v1.34.5-3"];
const KCP: &str = "demo-cp";
const POOL: &str = "demo-pool-a";
const REQUEST: &str = "to-4-3";
const WAIT: Duration = Duration::from_secs(900);

fn kcp_object() -> String {
    format!("KubeadmControlPlane {KCP}")
}

fn md_object() -> String {
    format!("MachineDeployment {POOL}")
}

/// One test's world. Field order is drop order: the controller goes before the namespaces.
struct World {
    controller: Option<Controller>,
    client: kube::Client,
    platform: Platform,
    git: GitCluster,
    ns: TestNamespace,
}

/// The demo cluster (one control-plane machine, one pool of one) at 4.0.11 / Kubernetes 1.31,
/// its KubeadmControlPlane and MachineDeployment applied by Flux (`metadata` merged into
/// theirs, `extra` into the Kustomization's spec), its platform under a global at 4.3.2, and
/// request `to-4-3` (`gitops` as its spec.gitops) created before any controller runs.
async fn world(prefix: &str, metadata: Value, extra: Value, gitops: Value) -> World {
    let client = harness::client().await;
    let mut ns = harness::namespace(&client, prefix).await;
    project::install(&client).await;
    let start = Instant::now();
    let git = GitCluster::create(
        &client,
        &ns,
        "demo",
        START,
        "v131",
        1,
        &[("pool-a", 1)],
        metadata,
        extra,
    )
    .await;
    eprintln!(
        "{ns}: cluster applied by Flux and rolled out in {:?}",
        start.elapsed()
    );
    let platform = Platform::start(&client, &ns, "demo", "4.0.11", "4.3.2").await;
    ns.delete_with(&platform.namespace);
    let mut spec = json!({"clusterName": "demo", "targetVersion": "4.3"});
    if !gitops.is_null() {
        spec["gitops"] = gitops;
    }
    create_request(&client, &ns, REQUEST, spec).await;
    World {
        controller: None,
        client,
        platform,
        git,
        ns,
    }
}

impl World {
    fn start_controller(&mut self) {
        self.controller = Some(Controller::start_with(
            &self.ns,
            &self.platform.controller_args(),
        ));
    }

    fn log(&self) -> String {
        self.controller
            .as_ref()
            .map(|c| c.log.display().to_string())
            .unwrap_or_default()
    }

    async fn request(&self) -> UpgradeRequest {
        Api::<UpgradeRequest>::namespaced(self.client.clone(), &self.ns)
            .get(REQUEST)
            .await
            .unwrap()
    }

    async fn wait(&self, what: &str, done: impl Fn(&UpgradeRequest) -> bool) -> UpgradeRequest {
        let start = Instant::now();
        loop {
            let ur = self.request().await;
            if done(&ur) {
                return ur;
            }
            assert!(
                start.elapsed() < WAIT,
                "{REQUEST}: not {what} after {WAIT:?}; status: {}\ncontroller log: {}",
                serde_json::to_string_pretty(&ur.status).unwrap(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The request now, and whether it succeeded; fails the test if it stalled, or if it
    /// has not succeeded [`WAIT`] after `since`.
    async fn observe(&self, since: Instant) -> (UpgradeRequest, bool) {
        let ur = self.request().await;
        let why = match phase(&ur) {
            Some(Phase::Succeeded) => return (ur, true),
            Some(Phase::Stalled) => "stalled",
            _ if since.elapsed() > WAIT => "not Succeeded in time",
            _ => return (ur, false),
        };
        panic!(
            "{REQUEST} {why}: {}\ncontroller log: {}",
            serde_json::to_string_pretty(&ur.status).unwrap(),
            self.log()
        )
    }

    async fn kcp(&self) -> Value {
        get(capi::kcp_api(&self.client, &self.ns), KCP).await
    }

    async fn md(&self) -> Value {
        get(capi::md_api(&self.client, &self.ns), POOL).await
    }

    /// The Git-managed objects carry no field of the controller, and the audit log holds no
    /// write of the controller to any KubeadmControlPlane or MachineDeployment of the test.
    async fn assert_git_objects_not_written(&self) {
        assert::no_field_of_ours(&self.kcp().await);
        assert::no_field_of_ours(&self.md().await);
        let writes: Vec<_> = audit::entries()
            .into_iter()
            .filter(|e| {
                e.by_controller()
                    && e.is_write()
                    && e.namespace == *self.ns
                    && ["kubeadmcontrolplanes", "machinedeployments"].contains(&e.resource.as_str())
            })
            .collect();
        assert!(
            writes.is_empty(),
            "the controller wrote Git-managed objects: {writes:?}"
        );
    }

    async fn finish(mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
        self.ns.finish(&self.client).await;
    }
}

async fn get(api: Api<kube::api::DynamicObject>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// `object` is in `status.gitops` as Flux's, applied by this test's Kustomization.
fn listed_as_flux(
    s: &upgrade_controller::api::UpgradeRequestStatus,
    object: &str,
    ns: &str,
) -> upgrade_controller::api::GitOpsObject {
    let o = s
        .gitops
        .iter()
        .find(|o| o.object == object)
        .unwrap_or_else(|| panic!("{object} missing from status.gitops: {:?}", s.gitops))
        .clone();
    assert_eq!(o.tool, GitOpsTool::Flux, "{o:?}");
    assert_eq!(
        o.source.as_deref(),
        Some(&*format!("Kustomization {ns}/{}", gitops::KUSTOMIZATION)),
        "{o:?}"
    );
    o
}

fn status(ur: &UpgradeRequest) -> upgrade_controller::api::UpgradeRequestStatus {
    ur.status.clone().unwrap_or_default()
}

fn phase(ur: &UpgradeRequest) -> Option<Phase> {
    ur.status.as_ref().and_then(|s| s.phase)
}

/// The request's condition on whether Flux still applies Git.
const GIT_SYNCED: &str = "GitOpsSynced";

fn kustomization_of(ns: &str) -> String {
    format!("Kustomization {ns}/{}", gitops::KUSTOMIZATION)
}

/// Flux refused the revision: `Ready=False`, with the version guard's refusal holding `words`.
fn refused_by_guard(out: &e2e::flux::Outcome, guard: &VersionGuard, words: &[&str]) {
    assert_eq!(
        (out.ready.status.as_str(), out.ready.reason.as_str()),
        ("False", "ReconciliationFailed"),
        "{}",
        gitops::verdict(out)
    );
    let by = format!(
        "ValidatingAdmissionPolicy '{}' with binding '{}' denied request",
        guard.policy, guard.binding
    );
    for w in std::iter::once(by.as_str()).chain(words.iter().copied()) {
        assert!(
            out.ready.message.contains(w),
            "{w:?} missing from Flux's message: {}",
            out.ready.message
        );
    }
}

/// Flux applied the revision.
fn applied(out: &e2e::flux::Outcome) {
    assert_eq!(
        (out.ready.status.as_str(), out.ready.reason.as_str()),
        ("True", "ReconciliationSucceeded"),
        "{}",
        gitops::verdict(out)
    );
    assert_eq!(out.last_applied_revision, out.last_attempted_revision);
}

/// Every spec.version write the recorder saw on `kind`, with the pool writes made only once
/// the control plane had rolled out at their version (judged at the write's revision).
fn assert_one_minor_at_a_time(writes: &[Write]) {
    let expected: Vec<&str> = std::iter::once(START).chain(HOPS).collect();
    assert::writes_in_order(writes, "KubeadmControlPlane", &expected);
    assert::writes_in_order(writes, "MachineDeployment", &expected);
    for w in writes.iter().filter(|w| w.kind == "MachineDeployment") {
        assert!(
            w.control_plane_pending.is_empty(),
            "{} moved to {} before the control plane finished rolling out: {:?}",
            w.name,
            w.version,
            w.control_plane_pending
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handoff_the_person_commits_what_status_asks_and_flux_moves_the_cluster_hop_by_hop() {
    let test_start = Instant::now();
    let mut w = world(
        "gitops-handoff",
        json!({}),
        json!({}),
        json!({"mode": "Handoff"}),
    )
    .await;
    let guard = VersionGuard::apply(&w.client, &w.ns, KCP, BELOW_START).await;
    let writes = engine::record_writes(&w.client, &w.ns);
    w.start_controller();

    // The person: whenever status asks for something Git does not declare yet, commit exactly
    // that. The first time, commit a skipped minor instead, as a careless person might.
    let mut tried_a_skip = false;
    let mut commits = 0;
    let done = loop {
        let (ur, succeeded) = w.observe(test_start).await;
        if succeeded {
            break ur;
        }
        let s = status(&ur);
        if w.git.declare(&s.declare_in_git) {
            let asked: Vec<String> = s
                .declare_in_git
                .iter()
                .map(|d| format!("{} {}={:?}", d.object, d.field, d.value))
                .collect();
            eprintln!("status asks Git to declare: {asked:#?}");
            if !tried_a_skip {
                tried_a_skip = true;
                let asked_version =
                    gitops::get_field(w.git.object_mut(&kcp_object()), "spec.version")
                        .cloned()
                        .unwrap();
                assert_eq!(asked_version, HOPS[0], "the first hop is asked first");
                gitops::set_field(w.git.object_mut(&kcp_object()), "spec.version", HOPS[1]);
                let before = w.git.revision.clone();
                let out = w.git.commit().await;
                eprintln!("a skipped minor in Git: {}", gitops::verdict(&out));
                refused_by_guard(
                    &out,
                    &guard,
                    &[
                        &format!("KubeadmControlPlane {}/{KCP}", w.ns),
                        "skips a minor",
                        &format!("from {START} to {}", HOPS[1]),
                    ],
                );
                assert_eq!(
                    out.last_applied_revision, before,
                    "the refused revision is not applied"
                );
                // Nothing of that revision landed, and the request still waits for Git,
                // showing Flux's refusal.
                assert_eq!(w.kcp().await["spec"]["version"], START);
                let ur = w
                    .wait("showing Flux's refusal of the skip", |ur| {
                        let (value, _, message) = assert::condition(ur, GIT_SYNCED);
                        value == "False" && message.contains("skips a minor")
                    })
                    .await;
                assert_ne!(phase(&ur), Some(Phase::Stalled), "{:?}", ur.status);
                gitops::set_field(w.git.object_mut(&kcp_object()), "spec.version", HOPS[0]);
            }
            let out = w.git.commit().await;
            eprintln!(
                "commit {} after {:?}: {}",
                commits + 1,
                test_start.elapsed(),
                gitops::verdict(&out)
            );
            applied(&out);
            commits += 1;
        }
        assert::no_field_of_ours(&w.kcp().await);
        assert::no_field_of_ours(&w.md().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("Succeeded after {:?}", test_start.elapsed());

    let s = status(&done);
    assert_eq!(s.progress.as_deref(), Some("6/6"));
    assert_eq!(
        commits, 6,
        "one commit per step (3 hops, control plane then pool)"
    );
    for step in &s.plan {
        assert_eq!(step.state, StepState::Succeeded, "{step:?}");
        let (Some(started), Some(declared), Some(finished)) =
            (&step.started_at, &step.declared_at, &step.finished_at)
        else {
            panic!("a handed-off step records when Git declared it: {step:?}");
        };
        assert!(
            started.0 <= declared.0 && declared.0 <= finished.0,
            "{step:?}"
        );
    }
    // Both objects listed as Flux's, from the Kustomization that applies them.
    for object in [kcp_object(), md_object()] {
        listed_as_flux(&s, &object, &w.ns);
    }
    // What status says Git should declare at the end changes nothing when committed: at most
    // fields CAPI's webhooks defaulted on the live objects (a reference's namespace).
    let extra = w.git.differences(&s.declare_in_git);
    eprintln!("the final status.declareInGit adds to Git: {extra:?}");
    for d in &extra {
        assert!(d.contains(".namespace: Git has nothing"), "{d}");
    }
    let generations = (
        w.kcp().await["metadata"]["generation"].clone(),
        w.md().await["metadata"]["generation"].clone(),
    );
    if w.git.declare(&s.declare_in_git) {
        applied(&w.git.commit().await);
    }
    assert_eq!(
        (
            w.kcp().await["metadata"]["generation"].clone(),
            w.md().await["metadata"]["generation"].clone(),
        ),
        generations,
        "committing the final values changed the objects' specs"
    );
    let final_of = |object: &str, field: &str| {
        s.declare_in_git
            .iter()
            .find(|d| d.object == object && d.field == field)
            .map(|d| d.value.clone())
    };
    assert_eq!(
        final_of(&kcp_object(), "spec.version").as_deref(),
        Some(HOPS[2])
    );
    assert_eq!(
        final_of(&md_object(), "spec.template.spec.version").as_deref(),
        Some(HOPS[2])
    );
    // One minor at a time, control plane first, every version written by Flux only.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_one_minor_at_a_time(&writes.lock().unwrap().clone());
    w.assert_git_objects_not_written().await;
    let kcp = w.kcp().await;
    assert_eq!(
        gitops::owners(&kcp, "spec.version"),
        [e2e::flux::FIELD_MANAGER]
    );
    let md = w.md().await;
    assert_eq!(
        gitops::owners(&md, "spec.template.spec.version"),
        [e2e::flux::FIELD_MANAGER]
    );
    capi::kcp_rollout_pending(&w.client, &w.ns, KCP, HOPS[2])
        .await
        .map(|p| assert!(p.is_empty(), "{p:?}"))
        .unwrap();
    // Flux has nothing left to change: the next reconcile applies the last commit cleanly.
    applied(&w.git.reconcile().await);
    guard.remove(&w.client).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_without_a_protection_is_blocked_with_the_fix_and_nothing_is_written() {
    let mut w = world("gitops-direct", json!({}), json!({}), Value::Null).await;
    let templates_before = capi::dev_machine_template_api(&w.client, &w.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    w.start_controller();
    let ur = w
        .wait("blocked by GitOpsSafe", |ur| {
            phase(ur) == Some(Phase::Preflight)
                && status(ur).preflight.is_some_and(|p| {
                    p.checks
                        .iter()
                        .any(|c| c.name == CheckName::GitOpsSafe && c.state == CheckState::Failed)
                })
        })
        .await;
    let s = status(&ur);
    let checks = s.preflight.clone().unwrap().checks;
    let blocking: Vec<_> = checks
        .iter()
        .filter(|c| matches!(c.state, CheckState::Failed | CheckState::Unknown))
        .collect();
    assert_eq!(
        blocking.iter().map(|c| c.name).collect::<Vec<_>>(),
        [CheckName::GitOpsSafe],
        "only GitOpsSafe blocks: {blocking:#?}"
    );
    let check = blocking[0];
    assert_eq!(check.reason, "GitOpsWouldRevert");
    eprintln!("GitOpsSafe: {}", check.message);
    let kustomization = format!("Kustomization {}/{}", w.ns, gitops::KUSTOMIZATION);
    for (object, group, paths) in [
        (
            kcp_object(),
            "controlplane.cluster.x-k8s.io",
            r#"paths: ["/spec/version", "/spec/machineTemplate/infrastructureRef/name"]"#,
        ),
        (
            md_object(),
            "cluster.x-k8s.io",
            r#"paths: ["/spec/template/spec/version", "/spec/template/spec/infrastructureRef/name"]"#,
        ),
    ] {
        let (kind, name) = object.split_once(' ').unwrap();
        for words in [
            format!("{object}: {kustomization} would put back"),
            format!(
                "ignore: [{{{paths}, target: {{group: {group}, kind: {kind}, name: {name}, namespace: {}}}}}]",
                w.ns
            ),
        ] {
            assert!(
                check.message.contains(&words),
                "{words:?} missing from: {}",
                check.message
            );
        }
        let o = listed_as_flux(&s, &object, &w.ns);
        assert!(!o.protected, "{o:?}");
        assert!(
            o.evidence.contains(&format!(
                "label kustomize.toolkit.fluxcd.io/name={}",
                gitops::KUSTOMIZATION
            )),
            "{o:?}"
        );
    }
    assert!(
        check
            .message
            .contains("kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"),
        "{}",
        check.message
    );
    let (ready, reason, _) = assert::condition(&ur, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "PreflightFailed")
    );

    // After a complete reconcile, nothing was written anywhere but the request itself.
    w.controller
        .as_ref()
        .unwrap()
        .settle(&w.client, &w.ns)
        .await;
    w.assert_git_objects_not_written().await;
    let cvsh = w.platform.cvsh(&w.client, "demo").await;
    assert::no_field_of_ours(&cvsh);
    assert!(
        cvsh["spec"]["desiredUpdate"]["version"].is_null(),
        "Phase 1 was asked for: {}",
        cvsh["spec"]
    );
    let writes: Vec<_> = audit::entries()
        .into_iter()
        .filter(|e| {
            e.by_controller()
                && e.is_write()
                && (e.namespace == *w.ns || e.namespace == w.platform.namespace)
                && !["upgraderequests", "events"].contains(&e.resource.as_str())
        })
        .collect();
    assert!(writes.is_empty(), "the controller wrote: {writes:?}");
    assert_eq!(
        capi::dev_machine_template_api(&w.client, &w.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        templates_before,
        "no template was cloned"
    );
    assert_eq!(w.kcp().await["spec"]["version"], START);
    w.finish().await;
}

/// The index of the step in progress, if any.
fn step_in_progress(ur: &UpgradeRequest) -> Option<usize> {
    status(ur)
        .plan
        .iter()
        .position(|s| s.state == StepState::InProgress)
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_with_ssa_if_not_present_survives_every_flux_reconcile_and_a_revert_is_refused() {
    let test_start = Instant::now();
    let client = harness::client().await;
    let if_not_present = json!({"annotations": {e2e::flux::SSA_ANNOTATION: "IfNotPresent"}});
    let mut w = world("gitops-ssa", if_not_present, json!({}), Value::Null).await;
    let guard = VersionGuard::apply(&client, &w.ns, KCP, BELOW_START).await;
    let writes = engine::record_writes(&client, &w.ns);
    w.start_controller();

    // Flux reconciles at least once while each step runs, and puts nothing back.
    let mut reconciled = std::collections::BTreeSet::new();
    let mut reverted = false;
    let done = loop {
        let (ur, succeeded) = w.observe(test_start).await;
        if succeeded {
            break ur;
        }
        let s = status(&ur);
        if let Some(i) = step_in_progress(&ur)
            && !reconciled.contains(&i)
        {
            let (kcp, md) = (w.kcp().await, w.md().await);
            applied(&w.git.reconcile().await);
            let (kcp_after, md_after) = (w.kcp().await, w.md().await);
            assert_eq!(
                kcp_after["spec"]["version"], kcp["spec"]["version"],
                "Flux put the control plane's version back during step {i}"
            );
            assert_eq!(
                md_after["spec"]["template"]["spec"]["version"],
                md["spec"]["template"]["spec"]["version"],
                "Flux put the pool's version back during step {i}"
            );
            eprintln!(
                "step {i}: Flux reconciled after {:?}, KCP {}, pool {}",
                test_start.elapsed(),
                kcp_after["spec"]["version"],
                md_after["spec"]["template"]["spec"]["version"]
            );
            reconciled.insert(i);
        }
        // After hop 1's control plane, a commit drops the annotation while Git still declares
        // 1.31: Flux re-applies the old version over the live 1.32.
        if !reverted
            && s.plan
                .first()
                .is_some_and(|p| p.state == StepState::Succeeded)
        {
            reverted = true;
            for o in [kcp_object(), md_object()] {
                assert!(listed_as_flux(&s, &o, &w.ns).protected, "{:?}", s.gitops);
            }
            assert_eq!(
                gitops::owners(&w.kcp().await, "spec.version"),
                [upgrade_controller::FIELD_MANAGER],
                "the controller's write holds the version"
            );
            let protected_git = w.git.objects.clone();
            for o in &mut w.git.objects {
                o["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(e2e::flux::SSA_ANNOTATION);
            }
            let out = w.git.commit().await;
            eprintln!("Git's old version re-applied: {}", gitops::verdict(&out));
            refused_by_guard(
                &out,
                &guard,
                &[
                    // Flux names the first object the API server refused: the control
                    // plane, or the pool too when its step already moved it.
                    "lowering the Kubernetes minor of ",
                    &format!(" {}/", w.ns),
                    &format!(" from {} to {START} is refused", HOPS[0]),
                ],
            );
            // Not rolled back: declared and rolled out at 1.32, the annotation still on it;
            // the pool not lowered either.
            assert_ne!(w.md().await["spec"]["template"]["spec"]["version"], START);
            let kcp = w.kcp().await;
            assert_eq!(kcp["spec"]["version"], HOPS[0]);
            assert_eq!(
                kcp["metadata"]["annotations"][e2e::flux::SSA_ANNOTATION],
                "IfNotPresent"
            );
            let pending = capi::kcp_rollout_pending(&client, &w.ns, KCP, HOPS[0])
                .await
                .unwrap();
            assert!(pending.is_empty(), "{pending:?}");
            // The request says so, in Flux's words, and goes on.
            let ur = w
                .wait("showing Flux's refusal", |ur| {
                    let (value, reason, message) = assert::condition(ur, GIT_SYNCED);
                    value == "False"
                        && reason == "FluxNotReady"
                        && message.contains(&kustomization_of(&w.ns))
                        && message.contains("lowering the Kubernetes minor of ")
                })
                .await;
            eprintln!(
                "the request meanwhile: {:?} {:?}",
                phase(&ur),
                assert::condition(&ur, GIT_SYNCED)
            );
            assert_ne!(phase(&ur), Some(Phase::Stalled));
            assert::in_history(&ur, "GitOps: Kustomization");
            // The person restores the annotation in Git; Flux applies (skips) again, and the
            // request sees it.
            w.git.objects = protected_git;
            applied(&w.git.commit().await);
            assert_eq!(w.kcp().await["spec"]["version"], HOPS[0]);
            w.wait("seeing Flux apply again", |ur| {
                assert::condition(ur, GIT_SYNCED).0 == "True"
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("Succeeded after {:?}", test_start.elapsed());
    let s = status(&done);
    assert_eq!(s.progress.as_deref(), Some("6/6"));
    assert!(reverted);
    assert_eq!(
        reconciled.into_iter().collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>(),
        "Flux reconciled during every step"
    );
    // No revert ever landed: each object only ever moved forward, one minor at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_one_minor_at_a_time(&writes.lock().unwrap().clone());
    // Flux still applies Git cleanly at the end and the controller's versions stay; status
    // says what Git should now declare.
    applied(&w.git.reconcile().await);
    assert_eq!(w.kcp().await["spec"]["version"], HOPS[2]);
    assert_eq!(w.md().await["spec"]["template"]["spec"]["version"], HOPS[2]);
    let asked: Vec<_> = s
        .declare_in_git
        .iter()
        .filter(|d| d.field == "spec.version" || d.field == "spec.template.spec.version")
        .map(|d| (d.object.clone(), d.value.clone()))
        .collect();
    assert_eq!(
        asked,
        [
            (kcp_object(), HOPS[2].to_string()),
            (md_object(), HOPS[2].to_string())
        ]
    );
    guard.remove(&client).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_with_spec_ignore_completes_while_flux_is_refused_and_the_request_says_so() {
    let test_start = Instant::now();
    let client = harness::client().await;
    // The Kustomization's spec.ignore covers exactly the paths the controller writes.
    let rule = |group: &str, kind: &str, name: &str, paths: [&str; 2]| json!({"paths": paths, "target": {"group": group, "kind": kind, "name": name}});
    let ignore = json!({"ignore": [
        rule("controlplane.cluster.x-k8s.io", "KubeadmControlPlane", KCP,
            ["/spec/version", "/spec/machineTemplate/infrastructureRef/name"]),
        rule("cluster.x-k8s.io", "MachineDeployment", POOL,
            ["/spec/template/spec/version", "/spec/template/spec/infrastructureRef/name"]),
    ]});
    let mut w = world("gitops-ignore", json!({}), ignore, Value::Null).await;
    let guard = VersionGuard::apply(&client, &w.ns, KCP, BELOW_START).await;
    let writes = engine::record_writes(&client, &w.ns);
    w.start_controller();

    // GitOpsSafe passes, and says what the guard will do to Flux.
    let ur = w
        .wait("past preflight", |ur| {
            assert::check(ur, CheckName::GitOpsSafe).is_some_and(|c| c.state == CheckState::Passed)
        })
        .await;
    let check = assert::check(&ur, CheckName::GitOpsSafe).unwrap();
    assert!(
        check.message.contains("spec.ignore covers")
            && check
                .message
                .contains("stops applying until Git declares the new version"),
        "{}",
        check.message
    );

    // Flux reconciles while each step runs: refused by the guard (its dry-run sends Git's
    // old version), so it puts nothing back, and the request shows the refusal.
    let mut reconciled = std::collections::BTreeSet::new();
    let mut seen_refusal = false;
    let done = loop {
        let (ur, succeeded) = w.observe(test_start).await;
        if succeeded {
            break ur;
        }
        let (value, reason, message) = assert::condition(&ur, GIT_SYNCED);
        if value == "False" {
            assert_eq!(reason, "FluxNotReady", "{message}");
            assert!(
                message.contains(&kustomization_of(&w.ns))
                    && message.contains("lowering the Kubernetes minor of "),
                "{message}"
            );
            seen_refusal = true;
        }
        if let Some(i) = step_in_progress(&ur)
            && !reconciled.contains(&i)
        {
            let (kcp, md) = (w.kcp().await, w.md().await);
            let out = w.git.reconcile().await;
            refused_by_guard(&out, &guard, &["lowering the Kubernetes minor of "]);
            assert_eq!(w.kcp().await["spec"]["version"], kcp["spec"]["version"]);
            assert_eq!(
                w.md().await["spec"]["template"]["spec"]["version"],
                md["spec"]["template"]["spec"]["version"]
            );
            eprintln!(
                "step {i}: Flux refused after {:?}, KCP {}",
                test_start.elapsed(),
                kcp["spec"]["version"]
            );
            reconciled.insert(i);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("Succeeded after {:?}", test_start.elapsed());
    let s = status(&done);
    assert_eq!(s.progress.as_deref(), Some("6/6"));
    assert!(seen_refusal, "the request never showed Flux's refusal");
    assert_eq!(
        reconciled.into_iter().collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>(),
        "Flux reconciled during every step"
    );
    assert_one_minor_at_a_time(&writes.lock().unwrap().clone());
    // Finished, but Git is not applied: the request still says so ...
    assert_eq!(assert::condition(&done, GIT_SYNCED).0, "False");
    // ... until the person commits what status.declareInGit lists; then Flux applies it and
    // the finished request sees Git applied again.
    assert!(w.git.declare(&s.declare_in_git), "{:?}", s.declare_in_git);
    applied(&w.git.commit().await);
    assert_eq!(w.kcp().await["spec"]["version"], HOPS[2]);
    let ur = w
        .wait("seeing Flux apply Git again", |ur| {
            assert::condition(ur, GIT_SYNCED).0 == "True"
        })
        .await;
    assert_eq!(phase(&ur), Some(Phase::Succeeded));
    assert::in_history(&ur, "GitOps: applies Git again");
    guard.remove(&client).await;
    w.finish().await;
}
