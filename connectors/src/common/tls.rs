//! The one TLS client config of the connectors: rustls with the `ring` provider and the Mozilla
//! roots compiled in (webpki-roots). Chosen explicitly rather than through rustls' process-wide
//! default, so the build never needs aws-lc-sys (cmake) or OpenSSL and two providers in one binary
//! cannot make rustls panic.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

/// The shared client config (built once).
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            // The ring provider supports the safe default versions; failing here is a build bug.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}
