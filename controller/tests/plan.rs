//! Planner: the seed scenarios as a table, and the invariants as properties over the published
//! matrix.

use proptest::prelude::*;
use upgrade_controller::api::{ImageKey, MatrixRow, OSSupportMatrix, WorkerStrategy};
use upgrade_controller::decide::plan::{
    CurrentVersions, PlanError, PlanInput, PoolVersion, Step, StepKind, apply_step, plan,
};
use upgrade_controller::version::KubeVersion;

/// config/samples/os-support-matrix.yaml (4.0.9–4.3.2) plus the 4.4.0 row.
fn matrix() -> Vec<MatrixRow> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = std::fs::read_to_string(root.join("../config/samples/os-support-matrix.yaml"))
        .expect("sample matrix");
    let m: OSSupportMatrix = serde_yaml_ng::from_str(&sample).expect("sample matrix parses");
    let extra = std::fs::read_to_string(root.join("tests/fixtures/matrix-4.4.yaml")).unwrap();
    let extra: Vec<MatrixRow> = serde_yaml_ng::from_str(&extra).unwrap();
    m.spec.rows.into_iter().chain(extra).collect()
}

fn current(cp: &str, pools: &[(&str, &str)]) -> CurrentVersions {
    CurrentVersions {
        control_plane: cp.into(),
        pools: pools
            .iter()
            .map(|(n, v)| PoolVersion {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect(),
    }
}

fn input<'a>(rows: &'a [MatrixRow], target: &'a str, strategy: WorkerStrategy) -> PlanInput<'a> {
    PlanInput {
        rows,
        target,
        strategy,
        image_key: ImageKey::Default,
    }
}

/// Steps as compact strings: `CP 4.1.6 v1.32.11-2` / `W 4.1.6 v1.32.11-2 a,b`.
fn render(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s.kind {
            StepKind::KubeOvn => format!(
                "OVN {} {}",
                s.row.distribution_version,
                s.kube_ovn_chart.as_deref().unwrap_or_default()
            ),
            StepKind::ControlPlane => format!(
                "CP {} {}",
                s.row.distribution_version, s.row.kubernetes_version
            ),
            StepKind::Workers => format!(
                "W {} {} {}",
                s.row.distribution_version,
                s.row.kubernetes_version,
                s.pools.join(",")
            ),
        })
        .collect()
}

/// (name, control plane version, pools, target, strategy, expected steps)
type Scenario = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
    WorkerStrategy,
    Vec<&'static str>,
);

#[test]
fn seed_scenarios() {
    use WorkerStrategy::*;
    let rows = matrix();
    let ab = |v: &'static str| vec![("a", v), ("b", v)];
    #[rustfmt::skip]
    let table: Vec<Scenario> = vec![
        ("4.0 -> 4.3: three hops, latest patch row of each minor",
         "v1.31.14-2", ab("v1.31.14-2"), "4.3", EveryHop, vec![
            "CP 4.1.6 v1.32.11-2", "W 4.1.6 v1.32.11-2 a,b",
            "CP 4.2.5 v1.33.7-4", "W 4.2.5 v1.33.7-4 a,b",
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("4.1 -> 4.3",
         "v1.32.7", ab("v1.32.7"), "4.3", EveryHop, vec![
            "CP 4.2.5 v1.33.7-4", "W 4.2.5 v1.33.7-4 a,b",
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("4.2 -> 4.3",
         "v1.33.7-3", ab("v1.33.7-3"), "4.3", EveryHop, vec![
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("already at the target: nothing to do",
         "v1.34.5-3", ab("v1.34.5-3"), "4.3", EveryHop, vec![]),
        ("resuming after hop 1.33's control-plane step",
         "v1.33.7-4", ab("v1.32.11-2"), "4.3", EveryHop, vec![
            "W 4.2.5 v1.33.7-4 a,b",
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("pools at different versions: the lagging pool first joins the control plane",
         "v1.33.7-3", vec![("a", "v1.33.7-3"), ("b", "v1.32.7")], "4.3", EveryHop, vec![
            "W 4.2.4 v1.33.7-3 b",
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("exact target row",
         "v1.33.7-3", ab("v1.33.7-3"), "4.3.0", EveryHop, vec![
            "CP 4.3.0 v1.34.5", "W 4.3.0 v1.34.5 a,b"]),
        ("patch release within the target minor",
         "v1.34.5", ab("v1.34.5"), "4.3", EveryHop, vec![
            "CP 4.3.2 v1.34.5-3", "W 4.3.2 v1.34.5-3 a,b"]),
        ("SkipLevel 4.0 -> 4.3: pools stay 3 minors behind, then jump once",
         "v1.31.14-2", ab("v1.31.14-2"), "4.3", SkipLevel, vec![
            "CP 4.1.6 v1.32.11-2", "CP 4.2.5 v1.33.7-4", "CP 4.3.2 v1.34.5-3",
            "W 4.3.2 v1.34.5-3 a,b"]),
        ("SkipLevel 4.0 -> 4.4: pools must move before the control plane goes 4 minors ahead",
         "v1.31.14-2", ab("v1.31.14-2"), "4.4", SkipLevel, vec![
            "CP 4.1.6 v1.32.11-2", "CP 4.2.5 v1.33.7-4", "CP 4.3.2 v1.34.5-3",
            "W 4.3.2 v1.34.5-3 a,b",
            "CP 4.4.0 v1.35.6-acp.1", "W 4.4.0 v1.35.6-acp.1 a,b"]),
        ("no pools",
         "v1.32.7", vec![], "4.3", EveryHop, vec!["CP 4.2.5 v1.33.7-4", "CP 4.3.2 v1.34.5-3"]),
    ];
    for (name, cp, pools, target, strategy, want) in table {
        let got = plan(input(&rows, target, strategy), &current(cp, &pools))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(render(&got.steps), want, "{name}");
    }
}

#[test]
fn each_step_carries_its_rows_tags_and_provider_image() {
    let rows = matrix();
    let mut inp = input(&rows, "4.4", WorkerStrategy::EveryHop);
    inp.image_key = ImageKey::Dcs;
    let p = plan(inp, &current("v1.34.5-3", &[("a", "v1.34.5-3")])).unwrap();
    let cp = &p.steps[0];
    assert_eq!(cp.kind, StepKind::ControlPlane);
    assert_eq!(cp.row.core_dns_image_tag, "1.14.3-v4.4.6");
    assert_eq!(cp.row.etcd_image_tag, "v3.6.13-acp.0");
    assert_eq!(cp.os_image, "dcs-acp-4.4.0", "provider-specific name wins");
    inp.image_key = ImageKey::Vsphere;
    let p = plan(inp, &current("v1.34.5-3", &[])).unwrap();
    assert_eq!(
        p.steps[0].os_image, "acp-4.4.0-kube-v1.35.6-acp.1",
        "defaults to osImageVersion"
    );
}

#[test]
fn refusals_name_the_problem() {
    let rows = matrix();
    let ev = WorkerStrategy::EveryHop;
    let err = |cp: &str, pools: &[(&str, &str)], target: &str, rows: &[MatrixRow]| {
        plan(input(rows, target, ev), &current(cp, pools)).unwrap_err()
    };
    assert!(matches!(
        err("v1.34.5-3", &[], "4.2", &rows),
        PlanError::Downgrade { .. }
    ));
    assert!(
        matches!(
            err("v1.34.5-3", &[], "4.3.0", &rows),
            PlanError::Downgrade { .. }
        ),
        "a patch downgrade within the target minor is refused too"
    );
    let e = err("v1.32.7", &[], "4.5", &rows);
    assert!(matches!(e, PlanError::UnknownTarget { .. }));
    assert!(
        e.to_string().contains("4.3.2"),
        "lists the rows that exist: {e}"
    );
    assert!(matches!(
        err("v1.32.7", &[], "four", &rows),
        PlanError::InvalidTarget(_)
    ));
    assert!(matches!(
        err("latest", &[], "4.3", &rows),
        PlanError::InvalidCurrent { .. }
    ));

    let without_4_2: Vec<MatrixRow> = rows
        .iter()
        .filter(|r| !r.distribution_version.starts_with("4.2."))
        .cloned()
        .collect();
    let e = err("v1.32.7", &[], "4.3", &without_4_2);
    assert_eq!(
        e,
        PlanError::MissingRow {
            minor: "1.33".into(),
            target: "4.3.2".into()
        }
    );

    assert!(matches!(
        err("v1.32.7", &[("a", "v1.33.7-3")], "4.3", &rows),
        PlanError::PoolNewerThanControlPlane { .. }
    ));
    assert!(matches!(
        err("v1.35.6-acp.1", &[("a", "v1.31.14-2")], "4.4", &rows),
        PlanError::PoolTooFarBehind { .. }
    ));
}

// ---- properties -------------------------------------------------------------------------

fn kube_versions(rows: &[MatrixRow]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| r.kubernetes_version.clone()).collect();
    // Versions no row has exactly, as a hand-built cluster might run.
    v.extend(["v1.31.3", "v1.32.1", "v1.33.0", "v1.34.1"].map(String::from));
    v.sort();
    v.dedup();
    v
}

fn minor(v: &str) -> u64 {
    KubeVersion::parse(v).unwrap().minor().1
}

fn scenario() -> impl Strategy<Value = (String, Vec<String>, String, WorkerStrategy)> {
    let rows = matrix();
    let versions = kube_versions(&rows);
    let mut targets: Vec<String> = rows
        .iter()
        .map(|r| r.distribution_version.clone())
        .collect();
    targets.extend(["4.0", "4.1", "4.2", "4.3", "4.4"].map(String::from));
    let strategy = prop_oneof![
        Just(WorkerStrategy::EveryHop),
        Just(WorkerStrategy::SkipLevel)
    ];
    (
        prop::sample::select(versions.clone()),
        prop::sample::select(targets),
        strategy,
    )
        .prop_flat_map(move |(cp, target, strategy)| {
            let cp_minor = minor(&cp);
            let pool_versions: Vec<String> = versions
                .iter()
                .filter(|v| minor(v) <= cp_minor && minor(v) + 3 >= cp_minor)
                .cloned()
                .collect();
            (
                Just(cp),
                prop::collection::vec(prop::sample::select(pool_versions), 0..4),
                Just(target),
                Just(strategy),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn plans_keep_every_invariant((cp, pool_versions, target, strategy) in scenario()) {
        let rows = matrix();
        let pools: Vec<(String, String)> = pool_versions
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("pool-{i}"), v.clone()))
            .collect();
        let pool_refs: Vec<(&str, &str)> =
            pools.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let start = current(&cp, &pool_refs);
        let inp = input(&rows, &target, strategy);
        let result = plan(inp, &start);
        let p = match result {
            Ok(p) => p,
            Err(PlanError::Downgrade { .. }) => {
                // Only when the target's minor is below the control plane's, or the same
                // minor at an earlier release.
                let t = rows.iter().filter(|r| {
                    upgrade_controller::version::Target::parse(&target).unwrap().matches(
                        &upgrade_controller::version::DistributionVersion::parse(&r.distribution_version).unwrap())
                }).map(|r| minor(&r.kubernetes_version)).max().unwrap();
                prop_assert!(minor(&cp) >= t);
                return Ok(());
            }
            Err(PlanError::NoRowForControlPlaneVersion { .. }) => {
                // Only from a control-plane version no row has, with a pool 3 minors behind.
                prop_assert!(!rows.iter().any(|r| r.kubernetes_version == cp));
                prop_assert!(pool_versions.iter().any(|v| minor(&cp) - minor(v) == 3));
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected refusal: {e}"))),
        };

        // Deterministic, whatever the order pools are listed in.
        let mut reversed = start.clone();
        reversed.pools.reverse();
        prop_assert_eq!(&plan(inp, &reversed).unwrap(), &p);

        let mut state = start.clone();
        let mut cp_minor = minor(&cp);
        let mut seen_cp_step = false;
        for (i, step) in p.steps.iter().enumerate() {
            let step_minor = minor(&step.row.kubernetes_version);
            match step.kind {
                StepKind::ControlPlane => {
                    // EveryHop: a hop is finished (every pool at the control plane's minor)
                    // before the control plane starts the next one.
                    if strategy == WorkerStrategy::EveryHop && seen_cp_step {
                        for pool in &state.pools {
                            prop_assert_eq!(minor(&pool.version), cp_minor, "pool {} left behind", &pool.name);
                        }
                    }
                    seen_cp_step = true;
                    // Never skips a minor, never goes back.
                    prop_assert!(step_minor == cp_minor + 1 || (step_minor == cp_minor && i == 0),
                        "control plane {} -> {}", cp_minor, step_minor);
                    cp_minor = step_minor;
                }
                StepKind::KubeOvn => prop_assert!(false, "the hop planner plans no KubeOvn step"),
                StepKind::Workers => {
                    // Control plane first: workers only ever join the control plane's minor.
                    prop_assert_eq!(step_minor, cp_minor);
                    prop_assert!(!step.pools.is_empty());
                }
            }
            state = apply_step(&state, step);
            for pool in &state.pools {
                let pm = minor(&pool.version);
                prop_assert!(pm <= cp_minor, "pool {} newer than control plane", pool.name);
                prop_assert!(cp_minor - pm <= 3, "pool {} more than 3 minors behind", pool.name);
            }
            // Re-planning from here gives exactly the rest of the plan.
            let rest = plan(inp, &state).unwrap();
            prop_assert_eq!(&rest.steps[..], &p.steps[i + 1..], "after step {}", i);
        }
        // Everything ends exactly at the target row's version.
        prop_assert_eq!(&state.control_plane, &p.target_row.kubernetes_version);
        for pool in &state.pools {
            prop_assert_eq!(&pool.version, &p.target_row.kubernetes_version);
        }
    }
}
