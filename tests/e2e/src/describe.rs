//! `kubectl describe` as an operator runs it (the kubectl built with the control plane), and
//! the Events table it prints read back into rows.

use std::process::Command;

use crate::{harness, project};

/// The output of `kubectl describe <kind> <name> -n <ns>` against the test control plane;
/// fails the test unless kubectl succeeded.
pub fn describe(kind: &str, name: &str, ns: &str) -> String {
    let env = harness::env();
    let mut cmd = Command::new(env.kubectl());
    cmd.args(["describe", kind, name, "-n", ns])
        .env("KUBECONFIG", &env.kubeconfig);
    let out = project::run_ok(&mut cmd, &format!("kubectl describe {kind} {name} -n {ns}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One row of a describe's Events table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub type_: String,
    pub reason: String,
    pub from: String,
    pub message: String,
}

/// The rows of the `Events:` section of a describe output, in kubectl's order; empty when it
/// says `<none>` or has no such section. The columns are cut where the header's titles start
/// (kubectl aligns them with a tabwriter).
pub fn events(describe: &str) -> Vec<EventRow> {
    let mut lines = describe
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .skip(1);
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let col = |title: &str| header.find(title);
    let (Some(reason), Some(age), Some(from), Some(message)) =
        (col("Reason"), col("Age"), col("From"), col("Message"))
    else {
        return Vec::new();
    };
    // Titles are ASCII, so byte offsets in the header are character offsets in each row.
    let cell = |row: &[char], from: usize, to: usize| -> String {
        row[from.min(row.len())..to.min(row.len())]
            .iter()
            .collect::<String>()
            .trim()
            .to_string()
    };
    lines
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("----"))
        .take_while(|l| l.starts_with(' '))
        .map(|l| {
            let row: Vec<char> = l.chars().collect();
            EventRow {
                type_: cell(&row, 0, reason),
                reason: cell(&row, reason, age),
                from: cell(&row, from, message),
                message: cell(&row, message, row.len()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_table_is_cut_at_its_header_titles() {
        let out = "Name:  x\nStatus:\n  Phase:  Succeeded\nEvents:\n  Type    Reason        Age   From                Message\n  ----    ------        ----  ----                -------\n  Normal  Progress      10s   upgrade-controller  step 1: ControlPlane to Kubernetes v1.32.11-2 started\n  Normal  PhaseChanged  1s    upgrade-controller  Some(Upgrading) → Succeeded: the cluster is at 4.3.2\n";
        assert_eq!(
            events(out),
            vec![
                EventRow {
                    type_: "Normal".into(),
                    reason: "Progress".into(),
                    from: "upgrade-controller".into(),
                    message: "step 1: ControlPlane to Kubernetes v1.32.11-2 started".into(),
                },
                EventRow {
                    type_: "Normal".into(),
                    reason: "PhaseChanged".into(),
                    from: "upgrade-controller".into(),
                    message: "Some(Upgrading) → Succeeded: the cluster is at 4.3.2".into(),
                },
            ]
        );
        assert!(events("Events:  <none>\n").is_empty());
    }
}
