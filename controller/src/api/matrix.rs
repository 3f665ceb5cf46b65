//! `OSSupportMatrix`: which Kubernetes version, component image tags and OS image belong to
//! each Distribution Version (DOMAIN.md §1).

use kube::{CustomResource, KubeSchema};
use providers::ImageKey;
use serde::{Deserialize, Serialize};

use super::DNS_SUBDOMAIN;

/// An OCI image tag.
const IMAGE_TAG: &str = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";
/// An image or VM template name: printable, no leading or trailing space.
const IMAGE_NAME: &str = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$";
/// A Distribution Version, or a `MAJOR.MINOR` prefix of one.
const VERSION_OR_PREFIX: &str = r"^v?[0-9]{1,9}\.[0-9]{1,9}(\.[0-9]{1,9})?$";

/// The OS Support Matrix of the platform: one row per Distribution Version (an ACP patch
/// release). The upgrade engine steps Kubernetes one minor at a time and takes each hop's
/// Kubernetes version, CoreDNS and etcd tags and OS image from the row of that minor with the
/// highest Distribution Version not above the target.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "upgrade.cpaas.io",
    version = "v1alpha1",
    kind = "OSSupportMatrix",
    plural = "ossupportmatrices",
    shortname = "osm",
    doc = "The OS Support Matrix: Distribution Version → Kubernetes version, component tags and OS images",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OSSupportMatrixSpec {
    /// One row per Distribution Version, in any order; distributionVersion is the key.
    #[schemars(length(min = 1, max = 500))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["distributionVersion"]))]
    pub rows: Vec<MatrixRow>,
}

/// One Distribution Version and what a cluster at it runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MatrixRow {
    /// The Distribution Version (ACP patch release), `MAJOR.MINOR.PATCH` with an optional
    /// leading `v`, e.g. `4.3.1`.
    #[schemars(
        length(max = 32),
        regex(pattern = r"^v?[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}$")
    )]
    pub distribution_version: String,
    /// The Kubernetes version written to `spec.version` unchanged, suffix included, e.g.
    /// `v1.33.7-3` or `v1.35.6-acp.1`. Only major.minor is ever compared numerically.
    #[schemars(
        length(max = 40),
        regex(pattern = r"^v1\.[0-9]{1,4}\.[0-9]{1,6}([-+][0-9A-Za-z.+-]+)?$")
    )]
    pub kubernetes_version: String,
    /// CoreDNS image tag for `clusterConfiguration.dns.imageTag`, e.g. `1.14.2-v4.3.4`.
    #[serde(rename = "coreDNSImageTag")]
    #[schemars(length(min = 1, max = 128), regex(pattern = IMAGE_TAG))]
    pub core_dns_image_tag: String,
    /// etcd image tag for `clusterConfiguration.etcd.local.imageTag`, e.g. `v3.5.28-260325`.
    #[schemars(length(min = 1, max = 128), regex(pattern = IMAGE_TAG))]
    pub etcd_image_tag: String,
    /// The OS image version of this row; the default image name for every provider.
    #[schemars(length(min = 1, max = 253), regex(pattern = IMAGE_NAME))]
    pub os_image_version: String,
    /// Kube-OVN chart version for clusters whose network is Kube-OVN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        regex(pattern = r"^v?[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}([-+][0-9A-Za-z.+-]+)?$")
    )]
    pub kube_ovn_chart: Option<String>,
    /// Per-provider image (DCS, vSphere: VM template; HCS: image) names, where they differ
    /// from osImageVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ProviderImages>,
    /// Distribution Versions (or `MAJOR.MINOR` prefixes such as `4.1`) a cluster may upgrade
    /// from to this row. Empty means the platform publishes no restriction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 32), regex(pattern = VERSION_OR_PREFIX)))]
    pub upgradeable_from: Vec<String>,
    /// Kubernetes minors a cluster may run when it starts the upgrade to this row, e.g.
    /// `{min: "1.31", max: "1.34"}` for ACP 4.3. Absent: the row's minor and the three below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_kubernetes: Option<KubernetesRange>,
    /// Add-ons released with this Distribution Version, with the impact of moving to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub aligned_extensions: Vec<AlignedExtension>,
}

/// An inclusive range of Kubernetes minors (`1.31`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesRange {
    #[schemars(length(max = 8), regex(pattern = r"^v?1\.[0-9]{1,4}$"))]
    pub min: String,
    #[schemars(length(max = 8), regex(pattern = r"^v?1\.[0-9]{1,4}$"))]
    pub max: String,
}

/// Image names per infrastructure provider; each defaults to the row's osImageVersion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProviderImages {
    /// Huawei DCS VM template name (`DCSMachineTemplate.spec.template.spec.vmTemplateName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = IMAGE_NAME))]
    pub dcs: Option<String>,
    /// VMware vSphere VM template (`VSphereMachineTemplate.spec.template.spec.template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = IMAGE_NAME))]
    pub vsphere: Option<String>,
    /// Huawei Cloud Stack image name (`HCSMachineTemplate.spec.template.spec.imageName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = IMAGE_NAME))]
    pub hcs: Option<String>,
}

/// An Aligned extension and its version in a row.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlignedExtension {
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$")
    )]
    pub version: String,
    /// Impact of upgrading to this version; Medium and High need acknowledgement.
    pub impact: Impact,
}

/// Impact level of an Aligned extension upgrade.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum Impact {
    Low,
    Medium,
    High,
}

impl MatrixRow {
    /// The exact image name a provider must have staged for this row.
    pub fn image_for(&self, key: ImageKey) -> &str {
        let images = self.images.as_ref();
        let specific = match key {
            ImageKey::Dcs => images.and_then(|i| i.dcs.as_deref()),
            ImageKey::Vsphere => images.and_then(|i| i.vsphere.as_deref()),
            ImageKey::Hcs => images.and_then(|i| i.hcs.as_deref()),
            ImageKey::Default => None,
            ImageKey::KubernetesVersion => return &self.kubernetes_version,
        };
        specific.unwrap_or(&self.os_image_version)
    }
}
