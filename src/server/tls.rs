//! TLS for the three listeners (rustls with the ring provider): the certificate and key, and the
//! client CA that the OTLP listeners require certificates from when set. Built from the files'
//! contents, and rebuilt when they change; a connection takes the configuration current when it
//! arrives.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::response::IntoResponse as _;
use http::{HeaderValue, header};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::listener::Protocol;
use crate::api::ApiError;
use crate::config::TlsFiles;
use crate::lifecycle::watch::Contents;

/// Why TLS could not be set up from the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The configuration each listener hands its connections, swapped whole on reload.
pub type Acceptor = Arc<ArcSwap<ServerConfig>>;

/// The TLS configurations of the listeners.
#[derive(Clone)]
pub struct Certificates {
    pub grpc: Acceptor,
    pub http: Acceptor,
    pub api: Acceptor,
}

/// What each listener's configuration holds, from the files' contents.
struct Built {
    grpc: ServerConfig,
    http: ServerConfig,
    api: ServerConfig,
}

impl Certificates {
    /// Configurations from the contents of `files` (see [`TlsFiles::paths`]).
    pub fn new(files: &TlsFiles, contents: &Contents) -> Result<Self, TlsError> {
        let built = build(files, contents)?;
        let swap = |config| Arc::new(ArcSwap::from_pointee(config));
        Ok(Self {
            grpc: swap(built.grpc),
            http: swap(built.http),
            api: swap(built.api),
        })
    }

    /// Replaces every listener's configuration with one built from new contents; on error the
    /// current ones stay.
    pub fn reload(&self, files: &TlsFiles, contents: &Contents) -> Result<(), TlsError> {
        let built = build(files, contents)?;
        self.grpc.store(Arc::new(built.grpc));
        self.http.store(Arc::new(built.http));
        self.api.store(Arc::new(built.api));
        Ok(())
    }
}

fn build(files: &TlsFiles, contents: &Contents) -> Result<Built, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let file_error = |path: &PathBuf, message: &str| TlsError::File {
        path: path.display().to_string(),
        message: message.to_owned(),
    };
    let content = |i: usize| contents.get(i).map_or(&[][..], Vec::as_slice);
    let chain = CertificateDer::pem_slice_iter(content(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&files.cert_file, &format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(&files.cert_file, "no certificate in the file"));
    }
    let key = |files: &TlsFiles| {
        PrivateKeyDer::from_pem_slice(content(1))
            .map_err(|e| file_error(&files.key_file, &format!("no PEM private key: {e}")))
    };
    let client_verifier = match &files.client_ca_file {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(content(2)) {
                let ca =
                    ca.map_err(|e| file_error(path, &format!("not a PEM certificate: {e}")))?;
                roots
                    .add(ca)
                    .map_err(|e| file_error(path, &format!("not a CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(file_error(path, "no certificate in the file"));
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?,
            )
        }
    };
    let config = |alpn: &[u8], clients_verified: bool| -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match (&client_verifier, clients_verified) {
            (Some(verifier), true) => builder.with_client_cert_verifier(verifier.clone()),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain.clone(), key(files)?)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    };
    Ok(Built {
        grpc: config(b"h2", true)?,
        http: config(b"http/1.1", true)?,
        api: config(b"http/1.1", false)?,
    })
}

/// Makes ring the process's rustls provider, for the clients that pick the default one.
pub fn install_provider() {
    // a second install (tests start many servers) is refused, harmlessly
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}

/// What a TLS listener answers a client that speaks plaintext to it: an error saying so, in the
/// listener's own protocol, rather than a dropped connection.
pub fn plaintext_refusal(protocol: Protocol) -> Router {
    const MESSAGE: &str = "this port expects TLS: connect with https://";
    Router::new().fallback(move || async move {
        match protocol {
            // not retryable: the client must change how it connects
            Protocol::Http2 => {
                tonic::Status::failed_precondition(MESSAGE).into_http::<axum::body::Body>()
            }
            Protocol::Http1 => {
                // the REST error envelope, and no keep-alive for a client that will not do better
                let mut response = ApiError::BadRequest(MESSAGE.to_owned()).into_response();
                let close = HeaderValue::from_static("close");
                response.headers_mut().insert(header::CONNECTION, close);
                response
            }
        }
    })
}
