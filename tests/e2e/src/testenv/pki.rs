//! The test control plane's PKI: one CA that signs the kube-apiserver serving certificate, the
//! webhook servers' certificate and the admin client certificate, plus the service-account
//! signing key. Everything is generated fresh for every environment and lives in its state
//! directory; nothing here is meant to protect anything beyond loopback.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files written by [`generate`].
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    /// Directory holding `tls.crt` and `tls.key`, the layout controller-runtime's
    /// `--webhook-cert-dir` expects.
    pub webhook_cert_dir: PathBuf,
}

impl Pki {
    /// The file layout under `dir`, whether or not it has been generated yet.
    pub fn at(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
            webhook_cert_dir: dir.join("webhook"),
        }
    }
}

/// Loopback names every serving certificate answers to.
const LOOPBACK_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

/// Writes a fresh PKI under `dir`.
pub fn generate(dir: &Path) -> Result<Pki> {
    let pki = Pki::at(dir);
    std::fs::create_dir_all(&pki.webhook_cert_dir)
        .with_context(|| format!("creating {}", pki.webhook_cert_dir.display()))?;

    let ca = new_ca("upgrade-controller-testenv-ca")?;
    write(&pki.ca_cert, &ca.pem())?;

    // kube-apiserver: loopback plus the in-cluster names of the `kubernetes` Service, so a
    // client that resolves those (none here today) would still verify.
    let mut apiserver_sans: Vec<String> = LOOPBACK_SANS.iter().map(|s| s.to_string()).collect();
    apiserver_sans.extend(
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.96.0.1",
        ]
        .map(String::from),
    );
    leaf(
        &ca,
        apiserver_sans,
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
        &pki.apiserver_cert,
        &pki.apiserver_key,
    )?;
    leaf(
        &ca,
        LOOPBACK_SANS.map(String::from).to_vec(),
        "capi-webhooks",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
        &pki.webhook_cert_dir.join("tls.crt"),
        &pki.webhook_cert_dir.join("tls.key"),
    )?;
    // The admin identity: group system:masters is bound to cluster-admin by the API server's
    // bootstrap RBAC policy.
    leaf(
        &ca,
        Vec::new(),
        "testenv-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
        &pki.admin_cert,
        &pki.admin_key,
    )?;

    // Service-account tokens: kube-apiserver signs with the private key and verifies with the
    // public one (ES256 for a P-256 key).
    let sa = KeyPair::generate()?;
    write(&pki.service_account_key, &sa.serialize_pem())?;
    write(&pki.service_account_pub, &sa.public_key_pem())?;
    Ok(pki)
}

/// A fresh CA and a serving certificate for `sans` signed by it, in memory, as PEM:
/// (CA certificate, certificate, key). For webhook servers in a cluster (the kind suite's CAPI
/// managers), where no cert-manager runs.
pub fn serving_pair(common_name: &str, sans: Vec<String>) -> Result<(String, String, String)> {
    let ca = new_ca(&format!("{common_name}-ca"))?;
    let (cert, key) = signed(
        &ca,
        sans,
        common_name,
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    Ok((ca.pem(), cert, key))
}

fn new_ca(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    let (cert, key) = signed(ca, sans, common_name, organization, usage)?;
    write(cert_path, &cert)?;
    write(key_path, &key)
}

/// A certificate for `sans` signed by `ca` and its new key, as PEM.
fn signed(
    ca: &CertifiedIssuer<'_, KeyPair>,
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
