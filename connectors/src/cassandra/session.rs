//! The one way the sink and the query table connect: the configured contact points,
//! consistency, timeouts, credentials and datacenter, and the check that `local_datacenter` is a
//! datacenter of the cluster.

use std::sync::Arc;
use std::time::Instant;

use engine::{Error, Result, Retry};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, CqlRequestKind,
    MetadataError, NewSessionError,
};
use scylla::policies::retry::DefaultRetryPolicy;
use secrecy::ExposeSecret;

use super::config::Settings;
use crate::Error as ClientError;

/// A session on the cluster of `s`; `who` names the sink (or the query's table) in errors.
/// Every request uses the configured consistency and request timeout. A `local_datacenter` the
/// cluster does not have is a permanent error listing the cluster's datacenters.
pub(super) async fn connect(s: &Settings, who: &str) -> Result<Session> {
    // The driver retries a request at once on another node; pauses are the runtime's (see the
    // sink's module docs).
    let profile = ExecutionProfile::builder()
        .consistency(s.consistency)
        .request_timeout(Some(s.config.request_timeout))
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .build();
    // The default load balancing policy is token-aware; it needs the keyspace's replication,
    // which is the only schema metadata fetched.
    let mut builder = SessionBuilder::new()
        .known_nodes(&s.contact_points)
        .connection_timeout(s.config.connect_timeout)
        .keyspaces_to_fetch([s.config.keyspace.clone()])
        .default_execution_profile_handle(profile.into_handle());
    if let Some(dc) = &s.config.local_datacenter {
        builder = builder.prefer_datacenter(dc.clone());
    }
    if let Some(c) = &s.credentials {
        builder = builder.user(&c.username, c.password.expose_secret());
    }
    if let Some(tls) = &s.tls {
        builder = builder.tls_context(Some(tls.config.clone()));
    }
    let started = Instant::now();
    let session = builder.build().await.map_err(|e| {
        if s.tls.is_none() && reset_at_first_request(&e) {
            return Error::sink_failed(
                who,
                format!(
                    "cannot connect to {}: the node closed the connection at the first request \
                     (OPTIONS), as a TLS-only port does with a client that does not use TLS: \
                     set tls_ca_cert_path, or check the port ({e})",
                    s.contact_points.join(", ")
                ),
                Retry::Permanent,
            );
        }
        ClientError::cassandra(
            format!("cannot connect to {}", s.contact_points.join(", ")),
            e,
        )
        .at_sink(who)
    })?;
    let datacenters: Vec<String> = {
        let state = session.get_cluster_state();
        let mut dcs: Vec<String> = state
            .get_nodes_info()
            .iter()
            .filter_map(|n| n.datacenter.clone())
            .collect();
        dcs.sort();
        dcs.dedup();
        dcs
    };
    if let Some(dc) = &s.config.local_datacenter
        && !datacenters.contains(dc)
    {
        return Err(Error::sink_failed(
            who,
            format!(
                "local_datacenter {dc:?} is not a datacenter of the cluster; its datacenters are {datacenters:?}"
            ),
            Retry::Permanent,
        ));
    }
    tracing::info!(sink = %who, contact_points = ?s.contact_points,
        datacenters = ?datacenters, elapsed_ms = started.elapsed().as_millis() as u64,
        "Connected to Cassandra.");
    Ok(session)
}

/// Whether the session failed because every node broke the connection during the very first
/// request (OPTIONS), which is how a node whose native port requires TLS answers a plain client.
/// A node that is down refuses the connection instead, which stays transient. Only asked when
/// the client does not use TLS.
fn reset_at_first_request(e: &NewSessionError) -> bool {
    matches!(
        e,
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(setup),
            },
        )) if matches!(setup.request_kind, CqlRequestKind::Options)
            && matches!(setup.error, ConnectionSetupRequestErrorKind::BrokenConnection(_))
    )
}
