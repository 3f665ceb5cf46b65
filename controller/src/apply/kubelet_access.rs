//! The workload cluster's `kubeadm:apiserver-kubelet-client` ClusterRoleBinding, made sure of
//! when each control-plane step starts ([`super::prepare`]).
//!
//! kubeadm's patch releases from May 2026 on (kubernetes/kubernetes#138957, cherry-picked to
//! the 1.33, 1.34, 1.35 and 1.36 branches) no longer put the kube-apiserver's kubelet client
//! certificate (CN `kube-apiserver-kubelet-client`) in the `kubeadm:cluster-admins` group. Its
//! rights come from a ClusterRoleBinding to the built-in ClusterRole `system:kubelet-api-admin`,
//! and only `kubeadm init` and `kubeadm upgrade apply` create that binding. A KCP rollout only
//! runs `kubeadm join`, so on a cluster made by an older kubeadm the first control-plane node
//! from a new OS image has an API server that cannot reach any kubelet: `kubectl logs`, `exec`
//! and `port-forward` fail, and KCP itself (which reaches etcd through the API server's pod
//! proxy) stops with `unable to upgrade connection: Forbidden
//! (user=kube-apiserver-kubelet-client, verb=create, resource=nodes, subresource(s)=[proxy])`
//! while the old member is still in etcd. Seen here on the kind + CAPD suite at the 1.32 → 1.33
//! hop (tests/e2e/kind/README.md).
//!
//! Cluster API creates the binding itself from v1.11.11, v1.12.8 and v1.13
//! (kubernetes-sigs/cluster-api#13664, `EnsureKubeadmPermissions`, before every control-plane
//! update to a version below 1.38); v1.10, which the platform runs, never does. So the
//! controller does what those releases do, in the same way: create it when it is missing,
//! leave an existing one alone, for every target below 1.38 whatever its patch release (a
//! kubeadm older than the change already has these rights through its group, so the binding
//! widens nothing). It is written with the workload cluster's own kubeconfig (CAPI's
//! `<cluster>-kubeconfig` Secret, [`crate::observe::workload`]): only that Secret's own
//! credentials go with it, never the controller's (DESIGN.md "Security model").

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::Client;
use kube::api::{GetParams, ObjectMeta, PostParams};
use kube::core::{Request, Status};
use tracing::info;

use crate::error::{Error, Stall, StallReason};

/// The binding's name, as kubeadm and Cluster API name it.
pub const BINDING: &str = "kubeadm:apiserver-kubelet-client";
/// The built-in ClusterRole it binds.
pub const CLUSTER_ROLE: &str = "system:kubelet-api-admin";
/// The kube-apiserver's kubelet client certificate's CN.
pub const USER: &str = "kube-apiserver-kubelet-client";

/// The first minor whose kubeadm (and Cluster API) no longer needs the binding made for it.
const UNNEEDED_FROM: (u64, u64) = (1, 38);

/// Whether a control-plane step to `minor` makes sure of the binding.
pub fn needed_for(minor: (u64, u64)) -> bool {
    minor < UNNEEDED_FROM
}

/// The binding kubeadm creates.
pub fn binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(BINDING.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: USER.into(),
            namespace: None,
        }]),
    }
}

/// [`binding`] in the API server's protobuf encoding (`application/vnd.kubernetes.protobuf`):
/// the magic `k8s\0`, then a `runtime.Unknown` holding the TypeMeta and the object. Field
/// numbers from k8s.io/api rbac/v1 and k8s.io/apimachinery runtime `generated.proto`.
pub fn binding_protobuf() -> Vec<u8> {
    fn message(fields: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (number, bytes) in fields {
            // One-byte tags: every field number here is below 16.
            debug_assert!(*number < 16);
            // Wire type 2 (length-delimited): strings, bytes and embedded messages alike.
            out.push((number << 3) | 2);
            let mut len = bytes.len();
            while len >= 0x80 {
                out.push((len as u8) | 0x80);
                len >>= 7;
            }
            out.push(len as u8);
            out.extend_from_slice(bytes);
        }
        out
    }
    const RBAC: &[u8] = b"rbac.authorization.k8s.io";
    // ObjectMeta.name = 1.
    let meta = message(&[(1, BINDING.as_bytes())]);
    // Subject: kind = 1, apiGroup = 2, name = 3.
    let subject = message(&[(1, b"User"), (2, RBAC), (3, USER.as_bytes())]);
    // RoleRef: apiGroup = 1, kind = 2, name = 3.
    let role_ref = message(&[(1, RBAC), (2, b"ClusterRole"), (3, CLUSTER_ROLE.as_bytes())]);
    // ClusterRoleBinding: metadata = 1, subjects = 2, roleRef = 3.
    let object = message(&[(1, &meta), (2, &subject), (3, &role_ref)]);
    // runtime.TypeMeta: apiVersion = 1, kind = 2; runtime.Unknown: typeMeta = 1, raw = 2.
    let type_meta = message(&[
        (1, b"rbac.authorization.k8s.io/v1"),
        (2, b"ClusterRoleBinding"),
    ]);
    [
        b"k8s\0".as_slice(),
        &message(&[(1, &type_meta), (2, &object)]),
    ]
    .concat()
}

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The binding was there already (kubeadm, Cluster API or a person made it): untouched.
    Present,
    /// The controller created it.
    Created,
}

/// Creates the binding in the workload cluster `cluster` (`workload` is its client) unless a
/// binding of that name exists. A refusal, rejected credentials or any other answer a retry
/// cannot change becomes a stall that says what to do; a transient failure (5xx, 408, 429,
/// no connection) is returned for a retry with backoff.
pub async fn ensure(workload: &Client, cluster: &str) -> Result<Ensured, Error> {
    let request = Request::new("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings");
    let get = request
        .get(BINDING, &GetParams::default())
        .map_err(kube::Error::BuildRequest)?;
    match answer(workload, get).await? {
        (200, _) => return Ok(Ensured::Present),
        (404, _) => {}
        (code, message) => return Err(failed(cluster, "read", code, message)),
    }
    info!(
        cluster,
        binding = BINDING,
        "creating the kube-apiserver's kubelet-client ClusterRoleBinding in the workload cluster"
    );
    // Protobuf: every API server takes it for built-in kinds, and CAPI's in-memory API server
    // (the test suites' workload clusters) takes nothing else for a create.
    let params = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let mut create = request
        .create(&params, binding_protobuf())
        .map_err(kube::Error::BuildRequest)?;
    let headers = create.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    match answer(workload, create).await? {
        (200..=299, _) => Ok(Ensured::Created),
        // Made in between (by KCP of a newer Cluster API, or by a person): theirs stands.
        (409, _) => Ok(Ensured::Present),
        (code, message) => Err(failed(cluster, "create", code, message)),
    }
}

/// At most this much of an error answer is read, and at most [`MESSAGE_KEPT`] of its message
/// is kept: the server is whatever the tenant's kubeconfig Secret names.
const BODY_READ: usize = 64 * 1024;
const MESSAGE_KEPT: usize = 1024;

/// Sends `request` and returns the HTTP status code with the error message, if any. Not
/// kube's typed calls: they take an error's code from its body, and CAPI's in-memory API
/// server (the test suites' workload clusters) answers errors with a body that is not a
/// `Status`, which would turn its 404 into code 0.
async fn answer(
    workload: &Client,
    request: http::Request<Vec<u8>>,
) -> Result<(u16, String), Error> {
    use http_body::Body as _;
    let response = workload.send(request.map(kube::client::Body::from)).await?;
    let code = response.status().as_u16();
    if response.status().is_success() {
        return Ok((code, String::new()));
    }
    let mut stream = response.into_body();
    let mut body = Vec::new();
    while body.len() < BODY_READ {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_frame(cx));
        match frame.await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    body.extend_from_slice(&data);
                }
            }
            None => break,
        }
    }
    body.truncate(BODY_READ);
    let mut message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.pointer("/ErrStatus/message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    if message.len() > MESSAGE_KEPT {
        let mut end = MESSAGE_KEPT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    Ok((code, message))
}

/// The error for an answer `code` to the binding's `verb`: a retry for what may pass by
/// itself, a stall with the fix for the rest.
fn failed(cluster: &str, verb: &str, code: u16, message: String) -> Error {
    let stall = |reason: &'static str, text: String| -> Error {
        Stall::new(StallReason::Api(reason), text).into()
    };
    let by_hand = format!(
        "kubectl create clusterrolebinding {BINDING} --clusterrole={CLUSTER_ROLE} --user={USER}"
    );
    let why = format!(
        "the new control-plane nodes' kube-apiserver needs ClusterRoleBinding {BINDING} in workload cluster {cluster} (kubeadm no longer grants its kubelet client these rights through a group, and this Cluster API version does not create the binding)"
    );
    match code {
        401 => stall(
            "WorkloadCredentialsRejected",
            format!(
                "{why}, but workload cluster {cluster} rejected the credentials of its kubeconfig Secret ({cluster}-kubeconfig) on the binding's {verb}: {message} (401). Renew the Secret's credentials; the step starts once they are accepted"
            ),
        ),
        403 => stall(
            "KubeletClientAccessRefused",
            format!(
                "{why}, but the cluster's kubeconfig may not {verb} it: {message} (403). Create it as an administrator of that cluster: {by_hand}"
            ),
        ),
        408 | 429 | 500.. => kube::Error::Api(
            Status::failure(
                &format!(
                    "workload cluster {cluster}, {verb} of ClusterRoleBinding {BINDING}: {message}"
                ),
                "ServerTimeout",
            )
            .with_code(code)
            .boxed(),
        )
        .into(),
        _ => stall(
            "KubeletClientBindingFailed",
            format!(
                "{why}, but workload cluster {cluster} answered its {verb} with {code}: {message}. Create it there by hand: {by_hand}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_below_1_38_only() {
        assert!(needed_for((1, 31)));
        assert!(needed_for((1, 33)));
        assert!(needed_for((1, 37)));
        assert!(!needed_for((1, 38)));
        assert!(!needed_for((2, 0)));
    }

    #[test]
    fn binding_is_kubeadms() {
        let b = serde_json::to_value(binding()).unwrap();
        assert_eq!(
            b,
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "kubeadm:apiserver-kubelet-client"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:kubelet-api-admin"
                },
                "subjects": [{
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "kube-apiserver-kubelet-client"
                }]
            })
        );
    }
}
