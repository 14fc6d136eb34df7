//! Certificates for TLS on loopback: a certificate authority of the tests, and the files a
//! server and its clients need (`rcgen`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority of the tests.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and its key, PEM: a server's for `localhost` and 127.0.0.1 (which servers
    /// that also connect to each other, NATS routes and etcd peers, present both ways), or a
    /// client's.
    pub fn issue(&self, server: bool) -> (String, String) {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            if server { "localhost" } else { "worker" },
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of TLS on loopback, written in a folder: one CA, a server certificate for
/// 127.0.0.1 and a client certificate, each with its key.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA, PEM, for clients built here.
    pub ca_pem: String,
    /// The client certificate and its key, PEM.
    pub client_pem: (String, String),
    /// The CA, to issue more.
    authority: Ca,
}

impl TlsFiles {
    /// A fresh CA and its certificates, in `dir`.
    pub fn write(dir: &Path) -> Self {
        let ca = Ca::new("cluster CA");
        let (cert, key) = ca.issue(true);
        let client_pem = ca.issue(false);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem),
            cert: write("server.pem", &cert),
            key: write("server.key", &key),
            client_cert: write("client.pem", &client_pem.0),
            client_key: write("client.key", &client_pem.1),
            ca_pem: ca.pem.clone(),
            client_pem,
            authority: ca,
        }
    }

    /// A new server certificate and key of the same CA in place of the files, each replaced
    /// whole (written beside, then renamed), as an operator's rotation does.
    pub fn reissue(&self) {
        let (cert, key) = self.authority.issue(true);
        for (path, text) in [(&self.key, key), (&self.cert, cert)] {
            let beside = path.with_extension("new");
            std::fs::write(&beside, text).unwrap();
            std::fs::rename(&beside, path).unwrap();
        }
    }
}
