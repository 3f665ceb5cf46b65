//! The workload cluster's client, from CAPI's `<cluster>-kubeconfig` Secret.
//!
//! That Secret lives in the tenant's namespace, so whoever can write there decides what it
//! holds. A kubeconfig is more than data: kube's loader runs `exec` credential plugins and
//! `auth-provider` helpers, and reads `tokenFile`, `client-certificate`, `client-key` and
//! `certificate-authority` from the controller's own filesystem (where its ServiceAccount
//! token lives). This module treats the Secret as data only (DESIGN.md "Security model"): it
//! accepts a server URL, inline CA data, an optional TLS server name and inline credentials
//! (client certificate and key data, or a bearer token), refuses everything else by name, and
//! builds the client from a fresh kubeconfig holding exactly those fields.

use crate::observe::ClusterKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::inputs::describe_error;
use crate::preflight::WorkloadUnavailable;

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};

/// Why a kubeconfig was refused or could not be used; the message names the Secret's field
/// and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    #[error("is not a kubeconfig: {0}")]
    Parse(String),
    #[error("{0}")]
    Shape(String),
    #[error(
        "uses {field}, which {why}; the controller accepts only a server URL, certificate-authority-data, tls-server-name and inline credentials (client-certificate-data with client-key-data, or token) — rewrite the Secret with inline data"
    )]
    Refused { field: String, why: &'static str },
    #[error("cannot build a client from it: {0}")]
    Client(String),
}

impl KubeconfigError {
    /// A static reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            KubeconfigError::Parse(_) | KubeconfigError::Shape(_) => "KubeconfigInvalid",
            KubeconfigError::Refused { .. } => "KubeconfigRefused",
            KubeconfigError::Client(_) => "KubeconfigInvalid",
        }
    }
}

const RUNS_CODE: &str = "would run a program inside the controller";
const READS_FILES: &str = "would read a file from the controller's filesystem";
const NOT_INLINE: &str = "is not an inline credential";

fn refused(field: impl Into<String>, why: &'static str) -> KubeconfigError {
    KubeconfigError::Refused {
        field: field.into(),
        why,
    }
}

fn shape(msg: impl Into<String>) -> KubeconfigError {
    KubeconfigError::Shape(msg.into())
}

/// The fields that are data: what the client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineKubeconfig {
    pub server: String,
    pub certificate_authority_data: Option<String>,
    pub tls_server_name: Option<String>,
    pub credential: Credential,
}

/// An inline credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ClientCertificate { cert_data: String, key_data: String },
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientCertificate { .. } => f.write_str("ClientCertificate(..)"),
            Credential::Token(_) => f.write_str("Token(..)"),
        }
    }
}

fn unknown_fields(
    at: &str,
    other: &BTreeMap<String, serde_json::Value>,
) -> Result<(), KubeconfigError> {
    match other.keys().next() {
        Some(k) => Err(refused(
            format!("{at}.{k}"),
            "is not a field the controller knows",
        )),
        None => Ok(()),
    }
}

/// Checks a kubeconfig's current context and returns its data fields, or the first field that
/// is not plain data.
pub fn inline_kubeconfig(text: &str) -> Result<InlineKubeconfig, KubeconfigError> {
    let kc = Kubeconfig::from_yaml(text).map_err(|e| KubeconfigError::Parse(e.to_string()))?;
    let context_name = match (&kc.current_context, kc.contexts.as_slice()) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, [only]) => only.name.clone(),
        _ => return Err(shape("has no current-context")),
    };
    let named = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| {
            shape(format!(
                "current-context {context_name:?} is not in contexts"
            ))
        })?;
    let ctx = named
        .context
        .as_ref()
        .ok_or_else(|| shape(format!("context {context_name:?} is empty")))?;
    unknown_fields(&format!("contexts[{context_name}]"), &ctx.other)?;
    let user_name = ctx
        .user
        .as_deref()
        .ok_or_else(|| shape(format!("context {context_name:?} names no user")))?;

    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| shape(format!("cluster {:?} is not in clusters", ctx.cluster)))?;
    let at = format!("clusters[{}].cluster", ctx.cluster);
    if cluster.certificate_authority.is_some() {
        return Err(refused(format!("{at}.certificate-authority"), READS_FILES));
    }
    if cluster.proxy_url.is_some() {
        return Err(refused(
            format!("{at}.proxy-url"),
            "would send the controller's traffic through another host",
        ));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(refused(
            format!("{at}.insecure-skip-tls-verify"),
            "would accept any server certificate",
        ));
    }
    unknown_fields(&at, &cluster.other)?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| shape(format!("{at} has no server")))?;
    check_server(&server).map_err(|why| shape(format!("{at}.server {server:?} {why}")))?;

    let user = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.as_ref())
        .ok_or_else(|| shape(format!("user {user_name:?} is not in users")))?;
    let at = format!("users[{user_name}].user");
    let impersonates = user.impersonate.is_some()
        || user.impersonate_groups.is_some()
        || user.impersonate_uid.is_some()
        || user.impersonate_user_extra.is_some();
    let refused_user: [(bool, &str, &'static str); 8] = [
        (user.exec.is_some(), "exec", RUNS_CODE),
        (user.auth_provider.is_some(), "auth-provider", RUNS_CODE),
        (user.token_file.is_some(), "tokenFile", READS_FILES),
        (
            user.client_certificate.is_some(),
            "client-certificate",
            READS_FILES,
        ),
        (user.client_key.is_some(), "client-key", READS_FILES),
        (user.username.is_some(), "username", NOT_INLINE),
        (user.password.is_some(), "password", NOT_INLINE),
        (impersonates, "as (impersonation)", NOT_INLINE),
    ];
    if let Some((_, field, why)) = refused_user.iter().find(|(set, _, _)| *set) {
        return Err(refused(format!("{at}.{field}"), why));
    }
    unknown_fields(&at, &user.other)?;
    use secrecy::ExposeSecret;
    let token = user
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_string())
        .filter(|t| !t.is_empty());
    let cert = user
        .client_certificate_data
        .clone()
        .filter(|s| !s.is_empty());
    let key = user
        .client_key_data
        .as_ref()
        .map(|k| k.expose_secret().to_string())
        .filter(|s| !s.is_empty());
    let credential = match (token, cert, key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(shape(format!(
                "{at} has both a token and a client certificate; keep one"
            )));
        }
        (Some(t), None, None) => Credential::Token(t),
        (None, Some(cert_data), Some(key_data)) => Credential::ClientCertificate {
            cert_data,
            key_data,
        },
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(shape(format!(
                "{at} needs both client-certificate-data and client-key-data"
            )));
        }
        (None, None, None) => {
            return Err(shape(format!(
                "{at} has no inline credential (client-certificate-data with client-key-data, or token)"
            )));
        }
    };
    Ok(InlineKubeconfig {
        server,
        certificate_authority_data: cluster
            .certificate_authority_data
            .clone()
            .filter(|s| !s.is_empty()),
        tls_server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
        credential,
    })
}

/// An `https://host[:port]` URL with nothing else (no user info, path, query or fragment).
fn check_server(server: &str) -> Result<(), &'static str> {
    let uri: http::Uri = server.parse().map_err(|_| "is not a URL")?;
    if uri.scheme_str() != Some("https") {
        return Err("is not an https:// URL");
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host");
    };
    if authority.as_str().contains('@') {
        return Err("carries user information");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || server.contains('#') {
        return Err("has a path, query or fragment");
    }
    Ok(())
}

impl InlineKubeconfig {
    /// A kubeconfig with exactly these fields.
    fn to_kubeconfig(&self) -> Kubeconfig {
        let mut user = AuthInfo::default();
        match &self.credential {
            Credential::Token(t) => user.token = Some(t.clone().into()),
            Credential::ClientCertificate {
                cert_data,
                key_data,
            } => {
                user.client_certificate_data = Some(cert_data.clone());
                user.client_key_data = Some(key_data.clone().into());
            }
        }
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "workload".into(),
                cluster: Some(Cluster {
                    server: Some(self.server.clone()),
                    certificate_authority_data: self.certificate_authority_data.clone(),
                    tls_server_name: self.tls_server_name.clone(),
                    ..Cluster::default()
                }),
                ..NamedCluster::default()
            }],
            auth_infos: vec![NamedAuthInfo {
                name: "workload".into(),
                auth_info: Some(user),
                ..NamedAuthInfo::default()
            }],
            contexts: vec![NamedContext {
                name: "workload".into(),
                context: Some(Context {
                    cluster: "workload".into(),
                    user: Some("workload".into()),
                    namespace: None,
                    extensions: None,
                    other: BTreeMap::new(),
                }),
                ..NamedContext::default()
            }],
            current_context: Some("workload".into()),
            ..Kubeconfig::default()
        }
    }

    /// A client for the workload cluster, with short timeouts (a preflight must not hang on
    /// an unreachable cluster).
    pub async fn client(&self) -> Result<kube::Client, KubeconfigError> {
        let mut config = kube::Config::from_custom_kubeconfig(
            self.to_kubeconfig(),
            &KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| KubeconfigError::Client(e.to_string()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(10));
        config.proxy_url = None;
        config
            .headers
            .push((http::header::USER_AGENT, crate::user_agent()));
        kube::Client::try_from(config).map_err(|e| KubeconfigError::Client(e.to_string()))
    }
}

/// Workload-cluster clients, one per Cluster, rebuilt when its kubeconfig Secret changes
/// (a new `resourceVersion`). At most [`WORKLOAD_CLIENTS_KEPT`] are kept, the least recently
/// used going first: each holds a connection pool, and a management cluster may have
/// thousands of clusters of which few are in a preflight at once.
#[derive(Clone, Default)]
pub struct WorkloadClients(Arc<Mutex<HashMap<ClusterKey, Built>>>);

/// How many workload clients are kept.
pub const WORKLOAD_CLIENTS_KEPT: usize = 64;

/// A client, the Secret `resourceVersion` it was built from, and when it was last handed out.
type Built = (String, kube::Client, std::time::Instant);

impl WorkloadClients {
    fn keep(&self, key: ClusterKey, version: String, client: kube::Client) {
        let mut clients = self.0.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(key, (version, client, std::time::Instant::now()));
        while clients.len() > WORKLOAD_CLIENTS_KEPT {
            let oldest = clients
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => clients.remove(&k),
                None => break,
            };
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A client for the workload cluster of Cluster `ns/cluster` from CAPI's
    /// `<cluster>-kubeconfig` Secret (key `value`), which is data only.
    pub async fn client(
        &self,
        management: &kube::Client,
        ns: &str,
        cluster: &str,
    ) -> Result<kube::Client, WorkloadUnavailable> {
        let secrets: Api<Secret> = Api::namespaced(management.clone(), ns);
        let name = format!("{cluster}-kubeconfig");
        let unreadable = |message: String| WorkloadUnavailable {
            reason: "KubeconfigUnreadable",
            message,
        };
        let secret = secrets.get(&name).await.map_err(|e| {
            unreadable(format!(
                "reading Secret {ns}/{name}: {}",
                describe_error(&e)
            ))
        })?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let key = (ns.to_string(), cluster.to_string());
        if let Some((v, c, used)) = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
            && *v == version
        {
            *used = std::time::Instant::now();
            return Ok(c.clone());
        }
        let data = secret
            .data
            .and_then(|d| d.get("value").cloned())
            .ok_or_else(|| unreadable(format!("Secret {ns}/{name} has no key \"value\"")))?;
        let text = String::from_utf8(data.0)
            .map_err(|_| unreadable(format!("Secret {ns}/{name} is not UTF-8")))?;
        let refused = |e: KubeconfigError| WorkloadUnavailable {
            reason: e.reason(),
            message: format!("the kubeconfig in Secret {ns}/{name} (key value) {e}"),
        };
        let client = inline_kubeconfig(&text)
            .map_err(refused)?
            .client()
            .await
            .map_err(refused)?;
        self.keep(key, version, client.clone());
        Ok(client)
    }

    /// Uses `client` for Cluster `ns/cluster` while its kubeconfig Secret is at
    /// `resource_version` (a client built elsewhere: tests, or a proxy in front of it).
    pub fn insert(&self, ns: &str, cluster: &str, resource_version: &str, client: kube::Client) {
        self.keep(
            (ns.to_string(), cluster.to_string()),
            resource_version.to_string(),
            client,
        );
    }

    /// Forgets the client of a Cluster (when its last request is gone).
    pub fn forget(&self, ns: &str, cluster: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ns.to_string(), cluster.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_client() -> kube::Client {
        let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .body(kube::client::Body::empty())
                    .unwrap(),
            )
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn at_most_so_many_workload_clients_are_kept_the_least_recently_used_going_first() {
        let clients = WorkloadClients::default();
        for i in 0..WORKLOAD_CLIENTS_KEPT {
            clients.insert("ns", &format!("c{i}"), "1", offline_client());
        }
        assert_eq!(clients.len(), WORKLOAD_CLIENTS_KEPT);
        // c0 is used again (as `client` does on a hit), so c1 is now the least recent.
        clients
            .0
            .lock()
            .unwrap()
            .get_mut(&("ns".to_string(), "c0".to_string()))
            .unwrap()
            .2 = std::time::Instant::now();
        clients.insert("ns", "new", "1", offline_client());
        assert_eq!(clients.len(), WORKLOAD_CLIENTS_KEPT);
        let kept = clients.0.lock().unwrap();
        assert!(kept.contains_key(&("ns".to_string(), "c0".to_string())));
        assert!(kept.contains_key(&("ns".to_string(), "new".to_string())));
        assert!(!kept.contains_key(&("ns".to_string(), "c1".to_string())));
    }

    fn kubeconfig(cluster_extra: &str, user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: Q0E=
{cluster_extra}
users:
- name: u
  user:
{user}
contexts:
- name: ctx
  context: {{cluster: c, user: u}}
current-context: ctx
"
        )
    }

    fn refused_field(text: &str) -> String {
        match inline_kubeconfig(text) {
            Err(KubeconfigError::Refused { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn inline_credentials_are_accepted() {
        let k = inline_kubeconfig(&kubeconfig(
            "",
            "    client-certificate-data: Y2VydA==\n    client-key-data: a2V5",
        ))
        .unwrap();
        assert_eq!(k.server, "https://127.0.0.1:6443");
        assert_eq!(k.certificate_authority_data.as_deref(), Some("Q0E="));
        assert!(matches!(k.credential, Credential::ClientCertificate { .. }));
        let k = inline_kubeconfig(&kubeconfig("", "    token: abc")).unwrap();
        assert_eq!(k.credential, Credential::Token("abc".into()));
        // The rebuilt kubeconfig carries nothing but those fields.
        let rebuilt = serde_json::to_value(k.to_kubeconfig()).unwrap();
        assert_eq!(
            rebuilt["users"][0]["user"].as_object().unwrap().len(),
            1,
            "{rebuilt}"
        );
    }

    #[test]
    fn code_and_file_references_are_refused_by_name() {
        let exec = "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [-c, touch /tmp/pwned]";
        assert_eq!(refused_field(&kubeconfig("", exec)), "users[u].user.exec");
        let provider = "    auth-provider:\n      name: gcp\n      config: {cmd-path: /bin/sh}";
        assert_eq!(
            refused_field(&kubeconfig("", provider)),
            "users[u].user.auth-provider"
        );
        assert_eq!(
            refused_field(&kubeconfig(
                "",
                "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"
            )),
            "users[u].user.tokenFile"
        );
        assert_eq!(
            refused_field(&kubeconfig(
                "",
                "    client-certificate: /etc/tls.crt\n    client-key: /etc/tls.key"
            )),
            "users[u].user.client-certificate"
        );
        assert_eq!(
            refused_field(&kubeconfig(
                "    certificate-authority: /etc/ca.crt",
                "    token: abc"
            )),
            "clusters[c].cluster.certificate-authority"
        );
        assert_eq!(
            refused_field(&kubeconfig(
                "    proxy-url: http://10.0.0.1:3128",
                "    token: abc"
            )),
            "clusters[c].cluster.proxy-url"
        );
        assert_eq!(
            refused_field(&kubeconfig("", "    token: abc\n    as: system:admin")),
            "users[u].user.as (impersonation)"
        );
        assert_eq!(
            refused_field(&kubeconfig("", "    token: abc\n    made-up: 1")),
            "users[u].user.made-up"
        );
    }

    #[test]
    fn bad_shapes_say_what_is_missing() {
        let no_cred = inline_kubeconfig(&kubeconfig("", "    {}")).unwrap_err();
        assert!(
            no_cred.to_string().contains("no inline credential"),
            "{no_cred}"
        );
        let plain = kubeconfig("", "    token: abc").replace("https://", "http://");
        assert!(
            inline_kubeconfig(&plain)
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        assert!(matches!(
            inline_kubeconfig("not: [yaml"),
            Err(KubeconfigError::Parse(_))
        ));
        let path = kubeconfig("", "    token: abc").replace(":6443", ":6443/api?x=1");
        assert!(inline_kubeconfig(&path).is_err());
    }
}
