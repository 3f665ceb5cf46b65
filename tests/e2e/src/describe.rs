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
    /// `10s`, or `1s (x15 over 2m55s)` for a series of repeats shown as one row.
    pub age: String,
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
                age: cell(&row, age, from),
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
        // As kubectl 1.33 printed it (messages shortened).
        let out = concat!(
            "Name:         to-4-3\n",
            "  Target:\n",
            "    Kubernetes Version:    v1.34.5-3\n",
            "Events:\n",
            "  Type     Reason            Age                  From                Message\n",
            "  ----     ------            ----                 ----                -------\n",
            "  Normal   Progress          10s                  upgrade-controller  planned 6 steps to 4.3.2\n",
            "  Warning  PreflightBlocked  1s (x9 over 2m55s)   upgrade-controller  EtcdHealthy: KubeadmControlPlane demo-cp reports EtcdClusterHealthy=False\n",
        );
        assert_eq!(
            events(out),
            vec![
                EventRow {
                    type_: "Normal".into(),
                    reason: "Progress".into(),
                    age: "10s".into(),
                    from: "upgrade-controller".into(),
                    message: "planned 6 steps to 4.3.2".into(),
                },
                EventRow {
                    type_: "Warning".into(),
                    reason: "PreflightBlocked".into(),
                    age: "1s (x9 over 2m55s)".into(),
                    from: "upgrade-controller".into(),
                    message:
                        "EtcdHealthy: KubeadmControlPlane demo-cp reports EtcdClusterHealthy=False"
                            .into(),
                },
            ]
        );
        assert!(events("Events:  <none>\n").is_empty());
    }
}
