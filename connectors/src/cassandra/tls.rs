//! Client-to-node TLS for the Cassandra sink, state store and `query`: a rustls client config
//! (the same rustls and `ring` provider as the connectors' other TLS clients, see
//! `common/tls.rs`) trusting only the configured CA file.
//!
//! What "hostname verification" means here: the scylla driver connects to each node by the IP
//! address the cluster reports and hands rustls that address as the server name, so the node's
//! certificate must name its IP address (a `subjectAltName` of type IP). Turning verification
//! off (`tls_verify_hostname = false`) still checks the chain against the CA and the validity
//! dates; only a certificate that names another host is accepted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use scylla::client::session::TlsContext;

/// The TLS settings of a Cassandra connection, ready for the driver.
#[derive(Clone, Debug)]
pub struct CassandraTls {
    /// The CA file (for messages).
    pub ca_file: PathBuf,
    /// Whether the node's certificate must name the address connected to.
    pub verify_hostname: bool,
    /// Whether a client certificate is presented.
    pub client_cert: bool,
    /// The rustls config the driver uses.
    pub config: DriverConfig,
}

/// The rustls config handed to the driver (`session.tls_context(Some(config))`). Its `Debug` is
/// a placeholder: the config holds the client's private key, and the fields of [`CassandraTls`]
/// already say what it was built from.
#[derive(Clone)]
pub struct DriverConfig(pub Arc<ClientConfig>);

impl fmt::Debug for DriverConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientConfig { .. }")
    }
}

impl From<DriverConfig> for TlsContext {
    fn from(config: DriverConfig) -> Self {
        config.0.into()
    }
}

/// A problem with one of the TLS files: the config key and what is wrong.
pub type FileProblem = (&'static str, String);

impl CassandraTls {
    /// Reads the CA (and the client certificate and key, when given) and builds the config.
    ///
    /// # Errors
    /// Each file that cannot be read or holds no usable PEM, with the key it came from:
    /// `tls_ca_cert_path`, `tls_client_cert_path` or `tls_client_key_path`.
    pub fn new(
        ca_file: &Path,
        client: Option<(&Path, &Path)>,
        verify_hostname: bool,
    ) -> Result<Self, Vec<FileProblem>> {
        let mut problems = Vec::new();
        let mut roots = RootCertStore::empty();
        match CertificateDer::pem_file_iter(ca_file).and_then(|i| i.collect::<Result<Vec<_>, _>>())
        {
            Ok(certs) if certs.is_empty() => problems.push((
                "tls_ca_cert_path",
                format!("{} holds no PEM certificate", ca_file.display()),
            )),
            Ok(certs) => {
                for cert in certs {
                    if let Err(e) = roots.add(cert) {
                        problems.push((
                            "tls_ca_cert_path",
                            format!("{}: not a usable CA certificate: {e}", ca_file.display()),
                        ));
                    }
                }
            }
            Err(e) => problems.push((
                "tls_ca_cert_path",
                format!("cannot read {}: {e}", ca_file.display()),
            )),
        }
        let identity = client.and_then(|(cert, key)| {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read {}: {e}", cert.display()))
                .and_then(|c| {
                    if c.is_empty() {
                        Err(format!("{} holds no PEM certificate", cert.display()))
                    } else {
                        Ok(c)
                    }
                });
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read a PEM private key from {}: {e}", key.display()));
            match (chain, key_der) {
                (Ok(c), Ok(k)) => Some((c, k)),
                (c, k) => {
                    problems.extend(c.err().map(|m| ("tls_client_cert_path", m)));
                    problems.extend(k.err().map(|m| ("tls_client_key_path", m)));
                    None
                }
            }
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| vec![("tls_ca_cert_path", format!("{}: {e}", ca_file.display()))])?;
        let verifier: Arc<dyn ServerCertVerifier> = if verify_hostname {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // The ring provider supports the safe default versions; failing here is a build bug.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client_cert = identity.is_some();
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                vec![(
                    "tls_client_key_path",
                    format!("does not fit the certificate: {e}"),
                )]
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            ca_file: ca_file.to_owned(),
            verify_hostname,
            client_cert,
            config: DriverConfig(Arc::new(config)),
        })
    }
}

/// The CA's verifier, except that a certificate naming another host is accepted
/// (`tls_verify_hostname = false`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
