//! Flux in the tests: the test control plane runs the real kustomize-controller (see
//! [`crate::testenv`]); this module plays "Git" for it. A [`Source`] publishes a set of files
//! as a gzipped tarball served over HTTP on 127.0.0.1 and records it in an `ExternalArtifact`
//! (its `status.artifact`: url, digest, revision), as Flux's own source producers do. A
//! [`Kustomization`] applies one path of it, and [`Kustomization::reconcile`] asks Flux to
//! reconcile now and waits until it has, returning its `Ready` condition, so a test can assert
//! on what Flux applied and on what the API server refused it.
//!
//! What kustomize-controller v1.9.6 needs of an `ExternalArtifact` (read in its source):
//! `status.artifact` present with `url` (fetched with GET, 200 expected, 404 means "not yet"),
//! `digest` (`sha256:<hex>` of the file as served) and `revision` (a changed revision triggers a
//! reconcile); the CRD also requires `path` and `lastUpdateTime`. No condition is read. The
//! file is a gzipped tar of the tree; a path without a `kustomization.yaml` gets one generated
//! listing every manifest under it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::capi;

pub const SOURCE_V1: &str = "source.toolkit.fluxcd.io/v1";
pub const KUSTOMIZE_V1: &str = "kustomize.toolkit.fluxcd.io/v1";
/// Set to a new value to ask for a reconcile; Flux echoes it in `status.lastHandledReconcileAt`.
pub const RECONCILE_ANNOTATION: &str = "reconcile.fluxcd.io/requestedAt";
/// The Flux markers as the controller knows them (tests against real Flux keep them honest):
/// its field manager (forced server-side apply), the labels it puts on every object it applies
/// (the Kustomization's name and namespace), and the per-object apply policy annotation
/// (`IfNotPresent`: create only, `Ignore`, `Merge`, `Override`).
pub use upgrade_controller::preflight::gitops::{
    FLUX_KUSTOMIZATION_NAME as NAME_LABEL, FLUX_KUSTOMIZATION_NAMESPACE as NAMESPACE_LABEL,
    FLUX_MANAGER as FIELD_MANAGER, FLUX_SSA as SSA_ANNOTATION,
};

/// The field manager this module writes `ExternalArtifact`s with.
const PUBLISHER: &str = "e2e-flux-source";
/// How long [`Kustomization::reconcile`] waits for Flux.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(120);

/// The artifact server: one per test process, on a thread of its own (so it outlives any one
/// test's runtime), serving published tarballs by path on 127.0.0.1.
pub struct ArtifactServer {
    addr: SocketAddr,
    files: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

/// The process's artifact server, started on first use.
pub fn artifact_server() -> Result<&'static ArtifactServer> {
    static SERVER: OnceLock<std::result::Result<ArtifactServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| ArtifactServer::start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the Flux artifact server: {e}"))
}

impl ArtifactServer {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let files: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>> = Arc::default();
        let served = files.clone();
        std::thread::Builder::new()
            .name("flux-artifacts".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let served = served.clone();
                    std::thread::spawn(move || {
                        let _ = answer(stream, &served);
                    });
                }
            })
            .context("starting the artifact server thread")?;
        Ok(Self { addr, files })
    }

    /// The URL `path` (starting with `/`) is served at.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .expect("artifact map lock")
            .insert(path.to_string(), Arc::new(bytes));
    }
}

/// Answers one HTTP/1.x request: `GET <path>` of a published file, 404 for anything else.
fn answer(stream: TcpStream, files: &Mutex<BTreeMap<String, Arc<Vec<u8>>>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; the request has no body.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let body = match method {
        "GET" | "HEAD" => files.lock().expect("artifact map lock").get(path).cloned(),
        _ => None,
    };
    let mut out = stream;
    match body {
        Some(bytes) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            )?;
            if method == "GET" {
                out.write_all(&bytes)?;
            }
        }
        None => write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    out.flush()
}

/// A gzipped tar of `files` (path in the tree, contents), as Flux's sources produce. The same
/// files give the same bytes (fixed times, modes and order), so the same digest.
pub fn tarball(files: &[(impl AsRef<str>, impl AsRef<str>)]) -> Result<Vec<u8>> {
    let mut sorted: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_ref(), t.as_ref()))
        .collect();
    sorted.sort();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, text) in sorted {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, text.as_bytes())
            .with_context(|| format!("adding {path} to the artifact"))?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// `sha256:<hex>`, the digest format of `status.artifact.digest`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One published revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `r<n>@sha256:<hex>`: the n-th publication of this source, and its digest.
    pub revision: String,
    pub digest: String,
    pub url: String,
}

/// An `ExternalArtifact` in a namespace, whose revisions this test publishes.
pub struct Source {
    api: Api<DynamicObject>,
    namespace: String,
    name: String,
    published: u32,
}

impl Source {
    /// A source `name` in `namespace`; nothing is written until [`Source::publish`].
    pub fn new(client: &kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: capi::api(client, namespace, SOURCE_V1, "ExternalArtifact"),
            namespace: namespace.to_string(),
            name: name.to_string(),
            published: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `files` as the source's next revision: serves the tarball, creates the
    /// `ExternalArtifact` if needed and points its status at the new artifact (server-side
    /// apply on the status subresource), which makes Flux reconcile every Kustomization of it.
    pub async fn publish(
        &mut self,
        files: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> Result<Artifact> {
        let bytes = tarball(files)?;
        let digest = sha256_digest(&bytes);
        let hex = digest.trim_start_matches("sha256:");
        self.published += 1;
        let revision = format!("r{}@{digest}", self.published);
        let path = format!(
            "externalartifact/{}/{}/{hex}.tar.gz",
            self.namespace, self.name
        );
        let server = artifact_server()?;
        let url = server.url(&format!("/{path}"));
        let size = bytes.len();
        server.put(&format!("/{path}"), bytes);

        let pp = PatchParams::apply(PUBLISHER).force();
        let object = json!({
            "apiVersion": SOURCE_V1,
            "kind": "ExternalArtifact",
            "metadata": {"name": self.name},
            "spec": {},
        });
        self.api
            .patch(&self.name, &pp, &Patch::Apply(&object))
            .await
            .with_context(|| format!("applying ExternalArtifact {}", self.name))?;
        let now = serde_json::to_value(Time(Timestamp::now()))?;
        let status = json!({
            "apiVersion": SOURCE_V1,
            "kind": "ExternalArtifact",
            "metadata": {"name": self.name},
            "status": {
                "artifact": {
                    "digest": digest,
                    "path": path,
                    "url": url,
                    "revision": revision,
                    "lastUpdateTime": now,
                    "size": size,
                },
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": format!("stored artifact for revision '{revision}'"),
                    "lastTransitionTime": now,
                }],
            },
        });
        self.api
            .patch_status(&self.name, &pp, &Patch::Apply(&status))
            .await
            .with_context(|| format!("writing the status of ExternalArtifact {}", self.name))?;
        Ok(Artifact {
            revision,
            digest,
            url,
        })
    }
}

/// A condition as (status, reason, message), as a test asserts on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// What Flux reported for one handled reconcile request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The `Ready` condition: True with `ReconciliationSucceeded`, or False with the reason
    /// and, for a refused apply, the API server's message.
    pub ready: Condition,
    pub last_applied_revision: String,
    pub last_attempted_revision: String,
    /// `status.inventory.entries[].id` (`<namespace>_<name>_<group>_<kind>`).
    pub inventory: Vec<String>,
    /// The whole object, for anything else.
    pub object: Value,
}

impl Outcome {
    fn of(object: Value) -> Self {
        let status = &object["status"];
        let ready = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| Condition {
                status: str_of(&c["status"]),
                reason: str_of(&c["reason"]),
                message: str_of(&c["message"]),
            })
            .unwrap_or_default();
        let inventory = status["inventory"]["entries"]
            .as_array()
            .map(|es| es.iter().map(|e| str_of(&e["id"])).collect())
            .unwrap_or_default();
        Self {
            ready,
            last_applied_revision: str_of(&status["lastAppliedRevision"]),
            last_attempted_revision: str_of(&status["lastAttemptedRevision"]),
            inventory,
            object,
        }
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// A Flux Kustomization applying one path of a [`Source`].
pub struct Kustomization {
    api: Api<DynamicObject>,
    name: String,
}

impl Kustomization {
    /// Creates Kustomization `name` in `namespace`, applying `path` of `source` with pruning.
    /// Its interval is an hour, so Flux acts on a new revision or on [`Self::reconcile`]
    /// only, never between a test's steps. `extra` is merged into `spec` (JSON merge patch:
    /// `{"ignore": [...]}`, `{"force": true}`, ...).
    pub async fn create(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        source: &Source,
        path: &str,
        extra: Value,
    ) -> Result<Self> {
        let mut spec = json!({
            "interval": "1h",
            "path": path,
            "prune": true,
            "sourceRef": {"kind": "ExternalArtifact", "name": source.name()},
        });
        json_patch::merge(&mut spec, &extra);
        let object = json!({
            "apiVersion": KUSTOMIZE_V1,
            "kind": "Kustomization",
            "metadata": {"name": name},
            "spec": spec,
        });
        let api = capi::api(client, namespace, KUSTOMIZE_V1, "Kustomization");
        api.patch(name, &PatchParams::apply(PUBLISHER), &Patch::Apply(&object))
            .await
            .with_context(|| format!("creating Kustomization {namespace}/{name}"))?;
        Ok(Self {
            api,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Kustomization as it is now.
    pub async fn get(&self) -> Result<Value> {
        Ok(serde_json::to_value(self.api.get(&self.name).await?)?)
    }

    /// Asks Flux to reconcile now (as `flux reconcile kustomization` does) and returns the
    /// request's token.
    pub async fn reconcile_now(&self) -> Result<String> {
        let token = format!("{}", Timestamp::now().as_nanosecond());
        let patch = json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: token}}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("requesting a reconcile of {}", self.name))?;
        Ok(token)
    }

    /// Waits until Flux has handled request `token` in a reconcile of `revision` and reports
    /// the result (`Ready` True or False, not Unknown). Flux records the request when a
    /// reconcile ends, including the one that only adds its finalizer (no `Ready` yet) and one
    /// that ran before its cache saw the new revision; both are waited past.
    pub async fn wait_handled(
        &self,
        token: &str,
        revision: &str,
        timeout: Duration,
    ) -> Result<Outcome> {
        let what = format!("reconcile request {token} of revision {revision}");
        self.wait(&what, timeout, |o| {
            o.object["status"]["lastHandledReconcileAt"] == token
                && o.last_attempted_revision == revision
        })
        .await
    }

    /// Waits until Flux has reconciled `revision` (on its own, as it does when the source
    /// publishes one) and reports the result: `lastAttemptedRevision` is set during that
    /// reconcile while `Ready` is Unknown, so both together mean it has ended.
    pub async fn wait_revision(&self, revision: &str, timeout: Duration) -> Result<Outcome> {
        let what = format!("revision {revision}");
        self.wait(&what, timeout, |o| o.last_attempted_revision == revision)
            .await
    }

    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Outcome) -> bool,
    ) -> Result<Outcome> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let outcome = Outcome::of(self.get().await?);
            // Flux records the attempted revision when it starts, while Ready still tells of
            // the previous one: Ready=True counts only once that revision is the applied one.
            let finished = match outcome.ready.status.as_str() {
                "True" => outcome.last_applied_revision == outcome.last_attempted_revision,
                "False" => true,
                _ => false,
            };
            if done(&outcome) && finished {
                return Ok(outcome);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Flux did not finish {what} for Kustomization {} within {}s; its status: {}",
                    self.name,
                    timeout.as_secs(),
                    outcome.object["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// [`Self::reconcile_now`], then [`Self::wait_handled`] for `revision` (the source's
    /// latest), within [`RECONCILE_TIMEOUT`].
    pub async fn reconcile(&self, revision: &str) -> Result<Outcome> {
        let token = self.reconcile_now().await?;
        self.wait_handled(&token, revision, RECONCILE_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_tarball_holds_the_files_and_is_the_same_for_the_same_files() {
        let files = [("b/two.yaml", "kind: B\n"), ("a/one.yaml", "kind: A\n")];
        let bytes = tarball(&files).unwrap();
        let mut reversed = files;
        reversed.reverse();
        assert_eq!(
            sha256_digest(&bytes),
            sha256_digest(&tarball(&reversed).unwrap())
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            assert_eq!(entry.header().mode().unwrap(), 0o644);
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            seen.push((path, text));
        }
        assert_eq!(
            seen,
            [
                ("a/one.yaml".to_string(), "kind: A\n".to_string()),
                ("b/two.yaml".to_string(), "kind: B\n".to_string())
            ]
        );
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_server_serves_published_files_and_404s_the_rest() {
        let server = artifact_server().unwrap();
        server.put("/x/a.tar.gz", b"payload".to_vec());
        let get = |path: &str| -> String {
            let mut s = TcpStream::connect(server.addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/x/a.tar.gz");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\npayload"), "{ok}");
        assert!(get("/x/b.tar.gz").starts_with("HTTP/1.1 404 "));
    }
}
