//! The CRDs in config/crd/ are exactly what the Rust types generate.

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crd");
    for (name, want) in upgrade_controller::crd::files() {
        let path = dir.join(&name);
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{} is stale or missing; run `cargo run -p upgrade-controller --bin crdgen` and commit",
            path.display()
        );
    }
}
