//! The server-side-apply bodies of the hop writes (DOMAIN.md §3), as small typed structs that
//! hold only the fields this controller owns: what is not in them is never sent, so never
//! taken from another manager.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{
    KubeadmControlPlane, MachineDeployment, Reference, SKIP_COREDNS_ANNOTATION,
    needs_kubelet_patch, with_kubelet_patch,
};

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApplyMeta {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// KubeadmControlPlane, in one write: version, CoreDNS and etcd tags, the new infrastructure
/// template, the skip-coredns annotation, and for ≥ 1.35 the kubelet patch file.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KcpWrite {
    pub api_version: String,
    pub kind: String,
    pub metadata: ApplyMeta,
    pub spec: KcpWriteSpec,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KcpWriteSpec {
    pub version: String,
    pub machine_template: KcpWriteTemplate,
    pub kubeadm_config_spec: KcpWriteConfig,
}

/// v1beta1 `{infrastructureRef}`, v1beta2 `{spec: {infrastructureRef}}`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum KcpWriteTemplate {
    V1beta1 {
        #[serde(rename = "infrastructureRef")]
        infrastructure_ref: Reference,
    },
    V1beta2 {
        spec: KcpWriteTemplateSpec,
    },
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KcpWriteTemplateSpec {
    pub infrastructure_ref: Reference,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KcpWriteConfig {
    pub cluster_configuration: KcpWriteClusterConfiguration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<Value>>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct KcpWriteClusterConfiguration {
    pub dns: ImageTag,
    pub etcd: EtcdLocal,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageTag {
    pub image_tag: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EtcdLocal {
    pub local: ImageTag,
}

/// The KubeadmControlPlane write of a hop to `version` (of `minor`).
pub fn kcp_apply(
    kcp: &KubeadmControlPlane,
    version: &str,
    minor: (u64, u64),
    core_dns_tag: &str,
    etcd_tag: &str,
    template_ref: Reference,
) -> KcpWrite {
    let machine_template = if kcp.is_v1beta2() {
        KcpWriteTemplate::V1beta2 {
            spec: KcpWriteTemplateSpec {
                infrastructure_ref: template_ref,
            },
        }
    } else {
        KcpWriteTemplate::V1beta1 {
            infrastructure_ref: template_ref,
        }
    };
    KcpWrite {
        api_version: kcp.api_version.clone(),
        kind: kcp.kind.clone(),
        metadata: ApplyMeta {
            name: kcp.metadata.name.clone().unwrap_or_default(),
            namespace: kcp.metadata.namespace.clone().unwrap_or_default(),
            annotations: BTreeMap::from([(SKIP_COREDNS_ANNOTATION.to_string(), String::new())]),
        },
        spec: KcpWriteSpec {
            version: version.to_string(),
            machine_template,
            kubeadm_config_spec: KcpWriteConfig {
                cluster_configuration: KcpWriteClusterConfiguration {
                    dns: ImageTag {
                        image_tag: core_dns_tag.to_string(),
                    },
                    etcd: EtcdLocal {
                        local: ImageTag {
                            image_tag: etcd_tag.to_string(),
                        },
                    },
                },
                files: needs_kubelet_patch(minor)
                    .then(|| with_kubelet_patch(&kcp.spec.kubeadm_config_spec.files)),
            },
        },
    }
}

/// MachineDeployment, in one write: version and infrastructure template, and (≥ 1.35) the
/// cloned bootstrap config template.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MdWrite {
    pub api_version: String,
    pub kind: String,
    pub metadata: ApplyMeta,
    pub spec: MdWriteSpec,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MdWriteSpec {
    pub template: MdWriteTemplate,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MdWriteTemplate {
    pub spec: MdWriteMachineSpec,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MdWriteMachineSpec {
    pub version: String,
    pub infrastructure_ref: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<MdWriteBootstrap>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MdWriteBootstrap {
    pub config_ref: Reference,
}

/// The MachineDeployment write of a hop to `version`.
pub fn md_apply(
    md: &MachineDeployment,
    version: &str,
    template_ref: Reference,
    bootstrap_ref: Option<Reference>,
) -> MdWrite {
    MdWrite {
        api_version: md.api_version.clone(),
        kind: md.kind.clone(),
        metadata: ApplyMeta {
            name: md.metadata.name.clone().unwrap_or_default(),
            namespace: md.metadata.namespace.clone().unwrap_or_default(),
            annotations: BTreeMap::new(),
        },
        spec: MdWriteSpec {
            template: MdWriteTemplate {
                spec: MdWriteMachineSpec {
                    version: version.to_string(),
                    infrastructure_ref: template_ref,
                    bootstrap: bootstrap_ref.map(|config_ref| MdWriteBootstrap { config_ref }),
                },
            },
        },
    }
}
