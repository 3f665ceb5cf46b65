//! `testenv up|down|status`: run the test control plane by hand (for the demo, debugging, or
//! pointing kubectl at it). `up` prints shell lines to use it:
//!
//! ```sh
//! eval "$(cargo run -q -p e2e --bin testenv -- up)"
//! kubectl get kubeadmcontrolplanes -A
//! ```

use anyhow::{Result, bail};
use e2e::testenv;

fn main() -> Result<()> {
    let cfg = testenv::Config::from_env()?;
    match std::env::args().nth(1).as_deref() {
        Some("up") => {
            let env = testenv::up(&cfg)?;
            eprintln!(
                "testenv: up at {} (logs in {})",
                env.server,
                cfg.log_dir().display()
            );
            println!("export KUBECONFIG={}", env.kubeconfig.display());
            println!(
                "export PATH={}:\"$PATH\"",
                env.kubectl().parent().expect("bin dir").display()
            );
        }
        Some("down") => {
            if testenv::down(&cfg)? {
                eprintln!("testenv: stopped");
            } else {
                eprintln!("testenv: nothing running");
            }
        }
        Some("status") => match testenv::current(&cfg)? {
            Some(env) if testenv::healthy(&cfg, &env) => {
                println!(
                    "running at {} (kubeconfig {})",
                    env.server,
                    env.kubeconfig.display()
                );
                for (name, pid) in &env.pids {
                    println!("  {name:<36} pid {pid}");
                }
            }
            Some(_) => bail!("recorded but unhealthy; run `testenv down` then `testenv up`"),
            None => bail!("not running"),
        },
        _ => bail!(
            "usage: testenv up|down|status  (env: UC_TESTENV_DIR, UC_TESTENV_PORT_BASE, UC_CACHE_DIR)"
        ),
    }
    Ok(())
}
