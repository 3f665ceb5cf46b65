//! `upgrade-controller plan` on files: the hop table an operator reviews before creating a
//! request.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_upgrade-controller"))
        .current_dir(root)
        .args(args)
        .output()
        .expect("running upgrade-controller");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kind kubernetesVersion <third>` per step of a JSON plan.
fn summary(stdout: &str, third: &str) -> Vec<String> {
    let steps: serde_json::Value = serde_json::from_str(stdout).unwrap();
    steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["kind"].as_str().unwrap(),
                s["kubernetesVersion"].as_str().unwrap(),
                s[third].as_str().unwrap_or("-")
            )
        })
        .collect()
}

const FILES: [&str; 4] = [
    "--matrix-file",
    "../config/samples/os-support-matrix.yaml",
    "--objects",
    "tests/fixtures/cluster-4.1.yaml",
];

#[test]
fn plan_from_files_as_json() {
    let mut args = vec!["plan", "--target", "4.3", "-o", "json"];
    args.extend(FILES);
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    let steps: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary(&stdout, "osImage"),
        [
            "ControlPlane v1.33.7-4 acp-4.2.5-kube-v1.33.7-4",
            "Workers v1.33.7-4 acp-4.2.5-kube-v1.33.7-4",
            "ControlPlane v1.34.5-3 acp-4.3.2-kube-v1.34.5-3",
            "Workers v1.34.5-3 acp-4.3.2-kube-v1.34.5-3",
        ]
    );
    assert_eq!(steps[1]["pools"], serde_json::json!(["prod-a-workers"]));
}

#[test]
fn plan_table_and_refusal() {
    let mut args = vec!["plan", "--target", "4.3"];
    args.extend(FILES);
    let (ok, stdout, _) = run(&args);
    assert!(ok);
    assert!(stdout.starts_with("STEP  KIND"), "{stdout}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");

    let mut args = vec!["plan", "--target", "4.0"];
    args.extend(FILES);
    let (ok, _, stderr) = run(&args);
    assert!(!ok, "a downgrade has no plan");
    assert!(stderr.contains("downgrade refused"), "{stderr}");
}

#[test]
fn plan_places_the_steps_in_the_requests_maintenance_windows() {
    let mut args = vec![
        "plan",
        "--target",
        "4.3",
        "--request-file",
        "tests/fixtures/request-windowed.yaml",
        "--from",
        "2026-12-18T12:00:00Z",
    ];
    args.extend(FILES);
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    // Saturday 19th 22:00 Berlin: the control plane (45m), then the pool (1h) ends 23:45;
    // the next hop's control plane on Sunday, its pool on Sunday too; Saturday 26th is
    // excluded, so nothing is left for it.
    for line in [
        "step 1: starts 2026-12-19T22:00:00+01:00[Europe/Berlin], ends by 2026-12-19T22:45:00+01:00[Europe/Berlin]",
        "step 2: starts 2026-12-19T22:45:00+01:00[Europe/Berlin], ends by 2026-12-19T23:45:00+01:00[Europe/Berlin]",
        "step 3: starts 2026-12-19T23:45:00+01:00[Europe/Berlin], ends by 2026-12-20T00:30:00+01:00[Europe/Berlin], window closes 2026-12-20T00:00:00+01:00[Europe/Berlin] (runs past the window",
        "step 4: starts 2026-12-20T22:00:00+01:00[Europe/Berlin]",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let mut json = args.clone();
    json.extend(["-o", "json"]);
    let (ok, stdout, stderr) = run(&json);
    assert!(ok, "{stderr}");
    let steps: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(steps[2]["window"]["fits"], false);
    assert_eq!(steps[0]["window"]["fits"], true);
}

#[test]
fn a_kube_ovn_cluster_previews_a_chart_step_before_each_control_plane_hop() {
    let (ok, stdout, stderr) = run(&[
        "plan",
        "--target",
        "4.3",
        "-o",
        "json",
        "--matrix-file",
        "../config/samples/os-support-matrix.yaml",
        "--objects",
        "tests/fixtures/cluster-4.1-kube-ovn.yaml",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        summary(&stdout, "kubeOvnChart"),
        [
            "KubeOvn v1.33.7-4 v4.2.33",
            "ControlPlane v1.33.7-4 -",
            "Workers v1.33.7-4 -",
            "KubeOvn v1.34.5-3 v4.3.11",
            "ControlPlane v1.34.5-3 -",
            "Workers v1.34.5-3 -",
        ]
    );
    let (ok, table, _) = run(&[
        "plan",
        "--target",
        "4.3",
        "--matrix-file",
        "../config/samples/os-support-matrix.yaml",
        "--objects",
        "tests/fixtures/cluster-4.1-kube-ovn.yaml",
    ]);
    assert!(ok);
    let first = table.lines().nth(1).unwrap();
    assert!(
        first.starts_with("1     KubeOvn") && first.contains("kube-ovn chart v4.2.33"),
        "{table}"
    );
}
