//! TLS of the connections a cluster node makes itself: to the indexers (a gateway's reads, a
//! joining replica's copy), to NATS and to etcd. Each verifies its server against a CA of the
//! cluster's settings and, for NATS and etcd, may present a client certificate. A connection
//! configured for TLS never falls back to plaintext.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// How long a connection to a peer, NATS or etcd may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The files a TLS client of the cluster verifies its server with, and may present itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA (PEM, one or more certificates) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate chain and its key (PEM), for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// An HTTP client of the cluster's own hops: HTTPS only, verified by `tls`, when set; plain HTTP
/// otherwise.
pub type HttpClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A client that opens connections within two seconds; HTTPS only when `tls` is set, plain HTTP
/// when it is not. No timeout on an answer's body: a proxied tail or export lasts as long as its
/// client reads; a client that stops reading stops this one, and the server's own stall timeout
/// ends what stalls.
pub fn http_client<B>(tls: Option<&ClientConfig>) -> HttpClient<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let builder = HttpsConnectorBuilder::new();
    let https = match tls {
        Some(config) => builder.with_tls_config(config.clone()).https_only(),
        // no CA: nothing could be verified, so an https:// URL fails rather than trusting
        None => builder
            .with_tls_config(client_builder(RootCertStore::empty()).with_no_client_auth())
            .https_or_http(),
    };
    let https = https.enable_http1().wrap_connector(connector);
    Client::builder(TokioExecutor::new()).build(https)
}

/// A configuration verifying servers against `roots`, to be given a client identity or none.
fn client_builder(
    roots: RootCertStore,
) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
}

/// The client configuration of `files`: servers verified against its CA, and its identity
/// presented when set. Errors name the file.
pub fn client_config(files: &ClientTlsFiles) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca_file)? {
        roots
            .add(ca)
            .with_context(|| format!("{}: not a CA certificate", files.ca_file.display()))?;
    }
    let builder = client_builder(roots);
    Ok(match &files.identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let key = PrivateKeyDer::from_pem_file(key_file)
                .with_context(|| format!("{}: no PEM private key", key_file.display()))?;
            builder
                .with_client_auth_cert(certificates(cert_file)?, key)
                .with_context(|| {
                    format!("{}: not a usable client certificate", cert_file.display())
                })?
        }
    })
}

/// The PEM certificates of `path`, at least one.
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certificates.is_empty() {
        bail!("{}: no certificate in the file", path.display());
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_encrypted_hop_never_falls_back_to_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let tls = client_config(&ClientTlsFiles {
            ca_file,
            identity: None,
        })
        .unwrap();
        // a listener that would answer plain HTTP: the client must not even connect
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/shards/0/logs", listener.local_addr().unwrap());
        let client: HttpClient<http_body_util::Empty<bytes::Bytes>> = http_client(Some(&tls));
        let refused = client.get(url.parse().unwrap()).await.unwrap_err();
        let mut reason = format!("{refused:?}");
        assert!(reason.contains("unsupported scheme http"), "{reason}");
        // a file that is no certificate names itself
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let files = ClientTlsFiles {
            ca_file: junk.clone(),
            identity: None,
        };
        reason = client_config(&files).unwrap_err().to_string();
        assert_eq!(
            reason,
            format!("{}: no certificate in the file", junk.display())
        );
    }
}
