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
    let summary: Vec<String> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["kind"].as_str().unwrap(),
                s["kubernetesVersion"].as_str().unwrap(),
                s["osImage"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
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
