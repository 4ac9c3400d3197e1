//! TLS for clients and peers (rustls with the ring provider; no system libraries).
//!
//! Certificates and the trusted CA are re-read when their files change (checked at most
//! once a second, on the next handshake), so they rotate without a restart, as etcd's do;
//! a file that no longer loads keeps the previous material and says why in the log.
//!
//! Peer identity: a member's peer certificate carries the DNS name
//! [`peer_name`]`(cluster, member)`. A dialer asks for that name (so the standard
//! verification proves whom it reached); an acceptor checks that the client certificate
//! carries the name of the member the connection's hello claims, so a connection
//! authenticated as member 2 can only ever speak as member 2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// How often the files behind a configuration are looked at for changes.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The files of one TLS endpoint, with etcd's meanings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates the other side's certificate must chain to (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require (on a listener) a client certificate that chains to the trusted CA.
    pub client_cert_auth: bool,
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file does not load.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// The crypto provider every configuration uses.
#[allow(
    deprecated,
    reason = "ring builds from Rust and a little C with no system libraries; aws-lc-rs (rustls's post-quantum default) needs cmake and a longer C build"
)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DNS name a member's peer certificate carries: member and cluster id.
pub fn peer_name(cluster_id: u64, member: u64) -> String {
    format!("member-{member}.{cluster_id:016x}.worknode")
}

/// Whether the DER certificate carries `name` (it was verified against the CA already).
pub fn certificate_names(der: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn load_key(
    path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsError> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))?;
    provider.key_provider.load_private_key(key).map_err(|e| file_error(path, e))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// Modification times of a set of files, to notice a change.
#[derive(Debug)]
struct Stamps {
    paths: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl Stamps {
    fn new(paths: Vec<PathBuf>) -> Self {
        let seen = paths.iter().map(|p| modified(p)).collect();
        Self { paths, seen, checked: Instant::now() }
    }

    /// Whether any file changed since the last call that said so (looked at once a second).
    fn changed(&mut self) -> bool {
        if self.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return false;
        }
        self.checked = Instant::now();
        let now: Vec<Option<SystemTime>> = self.paths.iter().map(|p| modified(p)).collect();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A value built from files, rebuilt when they change.
#[derive(Debug)]
struct Reloading<T> {
    current: RwLock<T>,
    stamps: Mutex<Stamps>,
    what: &'static str,
}

impl<T: Clone> Reloading<T> {
    fn new(value: T, paths: Vec<PathBuf>, what: &'static str) -> Self {
        Self { current: RwLock::new(value), stamps: Mutex::new(Stamps::new(paths)), what }
    }

    fn get(&self, reload: impl FnOnce() -> Result<T, TlsError>) -> T {
        let changed = self.stamps.lock().unwrap_or_else(PoisonError::into_inner).changed();
        if changed {
            match reload() {
                Ok(value) => {
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = value;
                    tracing::info!("{} reloaded: its files changed", self.what);
                }
                Err(error) => {
                    tracing::error!("{} not reloaded, keeping the previous one: {error}", self.what)
                }
            }
        }
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// This side's certificate and key, re-read when their files change.
#[derive(Debug)]
pub struct CertResolver {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    key: Reloading<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// Loads the certificate chain and key.
    pub fn new(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let key = certified_key(files, &provider)?;
        let paths = vec![files.cert_file.clone(), files.key_file.clone()];
        let what = "TLS certificate";
        Ok(Self { files: files.clone(), provider, key: Reloading::new(key, paths, what) })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.key.get(|| certified_key(&self.files, &self.provider))
    }
}

fn certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file, provider)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The handshake-signature methods both verifier traits share, passed to the current
/// verifier (`self.verifier()`).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.verifier().verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.verifier().verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.verifier().supported_verify_schemes()
        }
    };
}

/// Client certificates checked against the trusted CA, re-read when its file changes.
#[derive(Debug)]
struct ClientVerifier {
    ca_file: PathBuf,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
    inner: Reloading<Arc<dyn ClientCertVerifier>>,
}

fn client_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
    mandatory: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        load_roots(ca_file)?,
        Arc::clone(provider),
    );
    let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|e| file_error(ca_file, e))
}

impl ClientVerifier {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.get(|| client_verifier(&self.ca_file, &self.provider, self.mandatory))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier that may be replaced at any time; clients
        // send the certificate they are configured with either way.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }

    delegate_signatures!();
}

/// Server certificates checked against the trusted CA (re-read when its file changes)
/// and the name asked for.
#[derive(Debug)]
struct ServerVerifier {
    ca_file: PathBuf,
    provider: Arc<CryptoProvider>,
    inner: Reloading<Arc<rustls::client::WebPkiServerVerifier>>,
}

fn server_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        load_roots(ca_file)?,
        Arc::clone(provider),
    )
    .build()
    .map_err(|e| file_error(ca_file, e))
}

impl ServerVerifier {
    fn verifier(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        self.inner.get(|| server_verifier(&self.ca_file, &self.provider))
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    delegate_signatures!();
}

/// A listener's configuration: this side's certificate, and client certificates checked
/// against the trusted CA (required with `client_cert_auth`). ALPN offers HTTP/2 (gRPC).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = Arc::new(CertResolver::new(files, Arc::clone(&provider))?);
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = match &files.trusted_ca_file {
        Some(ca_file) => {
            let mandatory = files.client_cert_auth;
            let inner = client_verifier(ca_file, &provider, mandatory)?;
            let verifier = ClientVerifier {
                ca_file: ca_file.clone(),
                provider: Arc::clone(&provider),
                mandatory,
                inner: Reloading::new(inner, vec![ca_file.clone()], "trusted CA"),
            };
            builder.with_client_cert_verifier(Arc::new(verifier)).with_cert_resolver(resolver)
        }
        None if files.client_cert_auth => {
            return Err(file_error(
                &files.cert_file,
                "client_cert_auth needs trusted_ca_file to check client certificates against",
            ))
        }
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A dialer's configuration: this side's certificate as the client certificate, and the
/// server's checked against the trusted CA and the name dialed.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let ca_file = files.trusted_ca_file.as_ref().ok_or_else(|| {
        file_error(&files.cert_file, "a dialer needs trusted_ca_file to check the server against")
    })?;
    let inner = server_verifier(ca_file, &provider)?;
    let verifier = ServerVerifier {
        ca_file: ca_file.clone(),
        provider: Arc::clone(&provider),
        inner: Reloading::new(inner, vec![ca_file.clone()], "trusted CA"),
    };
    let resolver = Arc::new(CertResolver::new(files, Arc::clone(&provider))?);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// TLS for the peer transport: both configurations of this member's peer certificate.
#[derive(Clone)]
pub struct PeerTls {
    /// The cluster, for peer names.
    pub cluster_id: u64,
    /// For accepting peers (client certificates required).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// For dialing peers.
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Both sides from the `[peer_tls]` files (a trusted CA is required: peers
    /// authenticate each other).
    pub fn new(cluster_id: u64, files: &TlsFiles) -> Result<Self, TlsError> {
        let mutual = TlsFiles { client_cert_auth: true, ..files.clone() };
        let mut server = (*server_config(&mutual)?).clone();
        server.alpn_protocols.clear();
        Ok(Self {
            cluster_id,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(client_config(&mutual)?),
        })
    }

    /// The name member `member`'s peer certificate must carry.
    pub fn name_of(&self, member: u64) -> String {
        peer_name(self.cluster_id, member)
    }
}
