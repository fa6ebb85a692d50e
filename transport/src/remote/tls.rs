//! TLS settings of a [`TcpLauncher`](super::TcpLauncher): rustls with the
//! `ring` provider, TLS 1.2 and 1.3.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How a [`TcpLauncher`](super::TcpLauncher) speaks TLS to its listeners:
/// the certificate authority to trust (PEM), optionally the name to check
/// the listener's certificate against (by default the host part of the
/// endpoint or DNS name), and optionally a client certificate and key for
/// mutual TLS (`--tls-client-ca` on the listener).
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) server_name: Option<String>,
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trusts the certificate authorities in `ca_pem` (one or more PEM
    /// certificates) and no others.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        TlsConfig {
            ca_pem: ca_pem.into(),
            server_name: None,
            client: None,
        }
    }

    /// Checks the listener's certificate against `name` instead of the
    /// endpoint's host (e.g. when connecting to addresses).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Presents this client certificate chain and private key (PEM) for
    /// mutual TLS.
    pub fn client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The rustls client configuration, or what is wrong with the PEM.
    pub(crate) fn build(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let cert = cert.map_err(|e| format!("bad CA certificate PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no CA certificate in the PEM given".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("bad client certificate PEM: {e}"))?;
                if chain.is_empty() {
                    return Err("no client certificate in the PEM given".into());
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad client key PEM: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("unusable client certificate or key: {e}"))?
            }
        };
        Ok(Arc::new(config))
    }
}
