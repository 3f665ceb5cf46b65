//! `upgrade-controller plan`: the hop table for a cluster, from a live management cluster or
//! from files, without changing anything.

use std::fmt::Write as _;

use serde::Serialize;

use crate::api::{MatrixRow, WorkerStrategy};
use crate::decide::plan::{self, PlanInput, StepKind};
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
    let p = plan::plan(
        PlanInput {
            rows,
            target,
            strategy,
            image_key: key,
        },
        &current,
    )?;
    Ok(p.steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| PreviewStep {
            step: i + 1,
            kind: match s.kind {
                StepKind::ControlPlane => "ControlPlane",
                StepKind::Workers => "Workers",
            },
            distribution_version: s.row.distribution_version,
            kubernetes_version: s.row.kubernetes_version,
            core_dns_image_tag: s.row.core_dns_image_tag,
            etcd_image_tag: s.row.etcd_image_tag,
            os_image: s.os_image,
            pools: s.pools,
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
            [
                s.step.to_string(),
                s.kind.to_string(),
                s.distribution_version.clone(),
                s.kubernetes_version.clone(),
                s.core_dns_image_tag.clone(),
                s.etcd_image_tag.clone(),
                s.os_image.clone(),
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
    out
}
