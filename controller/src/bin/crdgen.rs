//! Writes the project's CRDs to `config/crd/` (or the directory given as the only argument).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd"));
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in upgrade_controller::crd::files() {
        let path = dir.join(&name);
        std::fs::write(&path, yaml)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
