//! `upgrade-controller plan`: the hop table for a cluster, from a live management cluster or
//! from files, without changing anything.

use std::fmt::Write as _;

use serde::Serialize;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{MatrixRow, UpgradeRequestSpec, WorkerStrategy};
use crate::decide::plan::{self, PlanInput, StepKind};
use crate::decide::window::Schedule;
use crate::decide::{self};
use crate::observe::Observed;

/// One row of the preview.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewStep {
    pub step: usize,
    pub kind: &'static str,
    pub distribution_version: String,
    pub kubernetes_version: String,
    pub core_dns_image_tag: String,
    pub etcd_image_tag: String,
    pub os_image: String,
    pub pools: Vec<String>,
    /// A KubeOvn step's chart (the Cluster annotation `cpaas.io/kube-ovn-version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_ovn_chart: Option<String>,
    /// Where the step falls in `spec.maintenanceWindow`, when the preview was given one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<StepWindow>,
}

/// A step placed in the maintenance windows, worst case: every step takes its whole timeout.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepWindow {
    /// The earliest start: the first open instant after the previous step's worst-case end.
    pub starts: String,
    /// Start plus the step's timeout (pools in batches of `maxConcurrentPools`).
    pub worst_case_end: String,
    /// When the window it starts in closes.
    pub window_closes: String,
    /// Whether the worst case ends before that window closes (else it runs on past it: a
    /// started step is never interrupted).
    pub fits: bool,
}

/// Places `steps` in the request's maintenance windows from `from` on (Phase 1 not counted:
/// its length depends on the platform). A step that cannot start within the schedule's
/// horizon, and every step after it, is left without a place.
pub fn schedule(
    steps: &mut [PreviewStep],
    spec: &UpgradeRequestSpec,
    from: Timestamp,
) -> anyhow::Result<()> {
    let Some(w) = &spec.maintenance_window else {
        return Ok(());
    };
    let schedule = Schedule::parse(w).map_err(anyhow::Error::msg)?;
    let timeout = |t: &crate::api::Timeout| -> anyhow::Result<SignedDuration> {
        Ok(SignedDuration::try_from(t.get()?)?)
    };
    let cp = timeout(&spec.timeouts.control_plane)?;
    let pool = timeout(&spec.timeouts.worker_pool)?;
    let mut t = from;
    for step in steps.iter_mut() {
        let Some((starts, closes)) = schedule.earliest(t) else {
            break;
        };
        let length = match step.kind {
            "ControlPlane" | "KubeOvn" => cp,
            _ => {
                let batches = step
                    .pools
                    .len()
                    .div_ceil(spec.workers.max_concurrent_pools.max(1) as usize)
                    .max(1);
                pool.checked_mul(i32::try_from(batches)?)
                    .ok_or_else(|| anyhow::anyhow!("step {}: duration overflow", step.step))?
            }
        };
        let end = starts.checked_add(length)?;
        step.window = Some(StepWindow {
            starts: schedule.local(starts),
            worst_case_end: schedule.local(end),
            window_closes: schedule.local(closes),
            fits: end <= closes,
        });
        t = end;
    }
    Ok(())
}

/// The preview of a plan, or why there is none.
pub fn preview(
    obs: &Observed,
    rows: &[MatrixRow],
    target: &str,
    strategy: WorkerStrategy,
) -> anyhow::Result<Vec<PreviewStep>> {
    let kcp = obs
        .kcp
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no KubeadmControlPlane found for the cluster"))?;
    let key = decide::image_key(kcp).map_err(|s| anyhow::anyhow!(s.message))?;
    let current = decide::declared(obs).expect("kcp present");
    let hops = plan::plan(
        PlanInput {
            rows,
            target,
            strategy,
            image_key: key,
        },
        &current,
    )?;
    let p = decide::with_network(hops, obs).map_err(|s| anyhow::anyhow!(s.message))?;
    Ok(p.steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| PreviewStep {
            step: i + 1,
            kind: match s.kind {
                StepKind::KubeOvn => "KubeOvn",
                StepKind::ControlPlane => "ControlPlane",
                StepKind::Workers => "Workers",
            },
            distribution_version: s.row.distribution_version,
            kubernetes_version: s.row.kubernetes_version,
            core_dns_image_tag: s.row.core_dns_image_tag,
            etcd_image_tag: s.row.etcd_image_tag,
            os_image: s.os_image,
            pools: s.pools,
            kube_ovn_chart: s.kube_ovn_chart,
            window: None,
        })
        .collect())
}

/// The preview as an aligned text table.
pub fn table(steps: &[PreviewStep]) -> String {
    let mut out = String::new();
    let header = [
        "STEP",
        "KIND",
        "DISTRIBUTION",
        "KUBERNETES",
        "COREDNS",
        "ETCD",
        "OS IMAGE",
        "POOLS",
    ];
    let rows: Vec<[String; 8]> = steps
        .iter()
        .map(|s| {
            // A KubeOvn step moves the chart only: its row's tags and image are the next step's.
            let (dns, etcd, image) = match &s.kube_ovn_chart {
                Some(chart) => ("-".into(), "-".into(), format!("kube-ovn chart {chart}")),
                None => (
                    s.core_dns_image_tag.clone(),
                    s.etcd_image_tag.clone(),
                    s.os_image.clone(),
                ),
            };
            [
                s.step.to_string(),
                s.kind.to_string(),
                s.distribution_version.clone(),
                s.kubernetes_version.clone(),
                dns,
                etcd,
                image,
                if s.pools.is_empty() {
                    "-".into()
                } else {
                    s.pools.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    if steps.is_empty() {
        out.push_str("(nothing to do: the cluster is at the target)\n");
    }
    if steps.iter().any(|s| s.window.is_some()) {
        out.push_str("\nMAINTENANCE WINDOWS (worst case: every step takes its whole timeout; Phase 1 not counted)\n");
        for s in steps {
            let _ = match &s.window {
                Some(w) => writeln!(
                    out,
                    "step {}: starts {}, ends by {}, window closes {}{}",
                    s.step,
                    w.starts,
                    w.worst_case_end,
                    w.window_closes,
                    if w.fits {
                        ""
                    } else {
                        " (runs past the window: a started step is never interrupted)"
                    }
                ),
                None => writeln!(out, "step {}: no window opens for it within a year", s.step),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: usize, kind: &'static str, pools: &[&str]) -> PreviewStep {
        PreviewStep {
            step: n,
            kind,
            distribution_version: String::new(),
            kubernetes_version: String::new(),
            core_dns_image_tag: String::new(),
            etcd_image_tag: String::new(),
            os_image: String::new(),
            pools: pools.iter().map(|p| p.to_string()).collect(),
            kube_ovn_chart: None,
            window: None,
        }
    }

    #[test]
    fn steps_fall_into_windows_by_their_timeouts() {
        let spec: UpgradeRequestSpec = serde_json::from_value(serde_json::json!({
            "clusterName": "c", "targetVersion": "4.3",
            "timeouts": {"controlPlane": "1h", "workerPool": "1h"},
            "workers": {"maxConcurrentPools": 2},
            "maintenanceWindow": {"timeZone": "UTC", "windows": [{"start": "22:00", "duration": "3h"}]},
        }))
        .unwrap();
        let mut steps = vec![
            step(1, "ControlPlane", &[]),
            step(2, "Workers", &["a", "b", "c"]),
            step(3, "ControlPlane", &[]),
        ];
        schedule(&mut steps, &spec, "2026-12-02T12:00:00Z".parse().unwrap()).unwrap();
        let w: Vec<_> = steps.iter().map(|s| s.window.as_ref().unwrap()).collect();
        assert_eq!(w[0].starts, "2026-12-02T22:00:00+00:00[UTC]");
        assert_eq!(w[0].worst_case_end, "2026-12-02T23:00:00+00:00[UTC]");
        assert!(w[0].fits);
        // Three pools, two at a time: two batches of an hour, past the 01:00 close.
        assert_eq!(w[1].starts, "2026-12-02T23:00:00+00:00[UTC]");
        assert_eq!(w[1].worst_case_end, "2026-12-03T01:00:00+00:00[UTC]");
        assert!(w[1].fits, "ends exactly at the close");
        // The window has closed: the next step starts in the next one.
        assert_eq!(w[2].starts, "2026-12-03T22:00:00+00:00[UTC]");
        let text = table(&steps);
        assert!(
            text.contains("step 3: starts 2026-12-03T22:00:00+00:00[UTC]"),
            "{text}"
        );
    }
}
