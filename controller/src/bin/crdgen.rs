//! Writes the project's CRDs to `config/crd/` and to the Helm chart's `crds/` (or only to the
//! directory given as the only argument), and copies the version guard into the chart.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let (source, copy) = upgrade_controller::crd::VERSION_GUARD;
            let copy = root.join(copy);
            std::fs::create_dir_all(copy.parent().expect("a file in a directory"))?;
            std::fs::copy(root.join(source), &copy)?;
            eprintln!("wrote {}", copy.display());
            upgrade_controller::crd::DIRS
                .iter()
                .map(|d| root.join(d))
                .collect()
        }
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (name, yaml) in upgrade_controller::crd::files() {
            let path = dir.join(&name);
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
