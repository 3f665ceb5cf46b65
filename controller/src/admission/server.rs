//! The webhook's HTTPS server: `POST /validate` takes an `admission.k8s.io/v1`
//! AdmissionReview of a KubeadmControlPlane or MachineDeployment and answers from the
//! controller's watch caches (Clusters, control planes, matrices) and one read of the
//! referenced machine template.
//!
//! TLS: `tls.crt` and `tls.key` (PEM) in `--webhook-cert-dir`, as a `kubernetes.io/tls`
//! Secret mounts them. A renewed certificate (cert-manager, or a Secret replaced by hand) is
//! picked up at the next handshake after the files change; no restart is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use super::{Facts, Subject, changes_checked_fields, review, rows_of_minor, subject};
use crate::capi;
use crate::observe::Caches;
use crate::version::KubeVersion;

/// The route the ValidatingWebhookConfiguration calls.
pub const PATH: &str = "/validate";

struct Webhook {
    client: Client,
    caches: Caches,
}

impl Webhook {
    /// The facts [`review`] needs about `s`.
    async fn facts(&self, s: &Subject) -> Result<Facts, String> {
        let mut facts = Facts::default();
        if let Some(cluster) = &s.cluster_name
            && let Some(c) = self.caches.clusters.get(&s.namespace, cluster)
            && let Some(cp) = c.spec.control_plane_ref.as_ref()
            && let Some(kcp) = self.caches.kcps.get(&s.namespace, &cp.name)
        {
            let running = kcp
                .status
                .version
                .clone()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| kcp.spec.version.clone());
            facts.control_plane = Some((
                format!("KubeadmControlPlane {}/{}", s.namespace, cp.name),
                running,
            ));
        }
        let (Some((api_version, kind, name)), Ok(version)) =
            (&s.template, KubeVersion::parse(&s.version))
        else {
            return Ok(facts);
        };
        // Only a provider's own machine template kinds are read (nothing else can be named
        // into this server's reads).
        let Ok(provider) = providers::for_template_kind(kind) else {
            return Ok(facts);
        };
        let api_version = if api_version.contains('/') {
            api_version.clone()
        } else {
            // v1beta2 references name the group only: the served version of the kind.
            format!("{api_version}/v1beta1")
        };
        let ar = capi::api_resource(&api_version, kind);
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &s.namespace, &ar);
        let template = match api.get_opt(name).await {
            Ok(Some(t)) => serde_json::to_value(t).unwrap_or_default(),
            // A template that does not exist yet: CAPI reports it; nothing to compare.
            Ok(None) => return Ok(facts),
            Err(e) => return Err(format!("reading {kind} {}/{name}: {e}", s.namespace)),
        };
        facts.template_image = provider.image_of(&template);
        let matrices = self.caches.matrices.all();
        facts.rows = rows_of_minor(
            matrices.iter().flat_map(|m| m.spec.rows.iter()),
            version.minor(),
            provider.image_key(),
        );
        Ok(facts)
    }

    async fn answer(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(req);
        if !matches!(req.operation, Operation::Create | Operation::Update) {
            return response;
        }
        let to_subject = |o: &Option<DynamicObject>| {
            o.as_ref()
                .and_then(|o| subject(&serde_json::to_value(o).ok()?))
        };
        let Some(new) = to_subject(&req.object) else {
            return response;
        };
        let old = to_subject(&req.old_object);
        if !changes_checked_fields(&new, old.as_ref()) {
            return response;
        }
        let facts = match self.facts(&new).await {
            Ok(f) => f,
            // The webhook configuration's failurePolicy decides what an unanswerable
            // request means; an error here is the same as being unreachable.
            Err(e) => {
                return response.deny(format!(
                    "upgrade-controller could not check {}: {e}",
                    new.what
                ));
            }
        };
        match review(&new, &facts) {
            Ok(warnings) => {
                let mut r = response;
                if !warnings.is_empty() {
                    r.warnings = Some(warnings);
                }
                r
            }
            Err(reason) => {
                info!(object = %new.what, user = %req.user_info.username.as_deref().unwrap_or("?"), "refused: {reason}");
                response.deny(reason)
            }
        }
    }
}

async fn validate(
    State(w): State<Arc<Webhook>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return Json(
                AdmissionResponse::invalid("the body holds no AdmissionReview request")
                    .into_review(),
            );
        }
    };
    Json(w.answer(&req).await.into_review())
}

/// The serving certificate, read again when its files change.
#[derive(Debug)]
struct CertFiles {
    dir: PathBuf,
    loaded: Mutex<Option<(SystemTime, Arc<CertifiedKey>)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertFiles {
    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let (crt, key) = (self.dir.join("tls.crt"), self.dir.join("tls.key"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
            .map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{}: no certificate in it", crt.display());
        }
        let key = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| anyhow::anyhow!("tls.key: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    /// The current certificate: reloaded when tls.crt or tls.key changed since it was read;
    /// a broken new pair keeps the old one in service (and says so).
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamp = modified(&self.dir.join("tls.crt"))
            .max(modified(&self.dir.join("tls.key")))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match loaded.as_ref() {
            Some((at, key)) if *at == stamp => return Some(key.clone()),
            _ => {}
        }
        match self.load() {
            Ok(key) => {
                *loaded = Some((stamp, key.clone()));
                Some(key)
            }
            Err(e) => {
                warn!("webhook certificate: {e}");
                loaded.as_ref().map(|(_, k)| k.clone())
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// Binds `addr` and returns the bound address and the server to run. The certificate must
/// load now: a webhook that cannot serve TLS fails the start instead of every admission.
pub async fn serve(
    addr: SocketAddr,
    cert_dir: PathBuf,
    client: Client,
    caches: Caches,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let certs = Arc::new(CertFiles {
        dir: cert_dir,
        loaded: Mutex::new(None),
    });
    let first = certs
        .load()
        .map_err(|e| anyhow::anyhow!("--webhook-cert-dir: {e}"))?;
    *certs.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some((
        modified(&certs.dir.join("tls.crt"))
            .max(modified(&certs.dir.join("tls.key")))
            .unwrap_or(SystemTime::UNIX_EPOCH),
        first,
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--webhook-bind-address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(PATH, post(validate))
        .with_state(Arc::new(Webhook { client, caches }));
    let server = async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("webhook: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        warn!(%peer, "webhook: TLS handshake: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let service = TowerToHyperService::new(app);
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    warn!(%peer, "webhook: {e}");
                }
            });
        }
    };
    Ok((bound, server))
}
