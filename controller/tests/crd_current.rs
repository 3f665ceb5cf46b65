//! The CRDs in config/crd/ and the chart's crds/ are exactly what the Rust types generate, and
//! the chart's copy of the version guard is config/admission's.

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in upgrade_controller::crd::DIRS {
        for (name, want) in upgrade_controller::crd::files() {
            let path = root.join(dir).join(&name);
            let got = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                got == want,
                "{} is stale or missing; run `cargo run -p upgrade-controller --bin crdgen` and commit",
                path.display()
            );
        }
    }
}

#[test]
fn the_charts_version_guard_is_the_one_in_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (source, copy) = upgrade_controller::crd::VERSION_GUARD;
    let want = std::fs::read_to_string(root.join(source)).expect("the version guard in config/");
    let got = std::fs::read_to_string(root.join(copy)).unwrap_or_default();
    assert!(
        got == want,
        "{copy} is stale or missing; run `cargo run -p upgrade-controller --bin crdgen` and commit"
    );
}
