//! TLS and SASL for the Kafka source, sink and dead-letter output: the `security` table of their
//! config sections, what it turns into (librdkafka properties), and [`SecurityWatch`], the client
//! context that notices when the broker refuses the login or the TLS handshake.
//!
//! Why a watch: librdkafka treats a refused login or a failed handshake like a broker that is
//! away, reconnecting with backoff for ever, and the caller only sees a metadata request time
//! out. The watch keeps the first such error (librdkafka's own text names the broker, e.g.
//! `sasl_ssl://127.0.0.1:9093/bootstrap`, and the SASL mechanism), so the connector can stop
//! with that reason as a permanent error instead of retrying what cannot succeed.
//!
//! Secrets: the config names environment variables, never the secret itself. The password is
//! read into a [`SecretString`] (its `Debug` prints `[REDACTED]`); librdkafka gets it as
//! `sasl.password`, which rdkafka's own `Debug` for `ClientConfig` leaves out. Passwords and
//! JAAS configs are refused in `properties`, so a config file cannot hold one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::common::config::{self, Problem};

/// librdkafka properties that [`KafkaSecurityConfig`] sets: refused in `properties` when a
/// `security` table is given, so the two cannot disagree.
const SECURITY_PROPERTIES: [&str; 9] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
];

/// librdkafka properties holding secrets: refused in `properties` always (a config file is no
/// place for a secret, and `properties` is printed by `Debug`).
const SECRET_PROPERTIES: [&str; 5] = [
    "sasl.password",
    "sasl.jaas.config",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
];

/// How the client talks to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// Plain TCP, no login (the default without a `security` table).
    Plaintext,
    /// TLS, no SASL login (a client certificate may authenticate).
    Ssl,
    /// A SASL login over plain TCP: the password crosses the network readable unless the
    /// mechanism is SCRAM.
    SaslPlaintext,
    /// TLS, then a SASL login.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`). GSSAPI and OAUTHBEARER are not offered:
/// this build links no libsasl2 and has no token source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// Salted challenge-response with SHA-512: the password never crosses the network.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// The same with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// The password itself is sent: only over TLS (`sasl_ssl`).
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// The name in config files, which is also librdkafka's and the broker's.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// `[source.security]`, `[sink.security]` (Kafka sink) and `[dead_letter.security]`: how to reach
/// brokers that require TLS and/or a SASL login. Without the table the client uses plain TCP.
// Serde reads a missing `Option` field as `None`: only the fields read by a function say so.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`; required with the `sasl_*` protocols, refused
    /// with the others.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The NAME of the environment variable holding the SASL user name (never the name itself);
    /// required with SASL.
    pub username_env: Option<String>,
    /// The NAME of the environment variable holding the SASL password; required with SASL.
    pub password_env: Option<String>,
    /// PEM file of the CA(s) the brokers' certificates must chain to (relative to the config
    /// file). Default: the system's trust store.
    #[serde(default, deserialize_with = "config::optional_path")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; set together with `key_file`. Default: none.
    #[serde(default, deserialize_with = "config::optional_path")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (unencrypted) of `cert_file`. Default: none.
    #[serde(default, deserialize_with = "config::optional_path")]
    pub key_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host connected to (default true). Turn off
    /// only for brokers whose certificates name something else; the chain is still verified.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

impl fmt::Debug for KafkaSecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only names of variables and paths: nothing secret, but written out to be sure no
        // field added later is printed without a thought.
        f.debug_struct("KafkaSecurityConfig")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username_env", &self.username_env)
            .field("password_env", &self.password_env)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

/// A SASL login read from the environment. `Debug` shows the user and the variables' names,
/// never the password.
#[derive(Clone)]
pub struct SaslLogin {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: SecretString,
    /// The variable the password came from (for messages).
    pub password_env: String,
}

impl fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field(
                "password",
                &format_args!("[REDACTED from ${}]", self.password_env),
            )
            .finish()
    }
}

/// [`KafkaSecurityConfig`] with the environment read and the files checked.
#[derive(Debug, Clone)]
pub struct KafkaSecurity {
    /// The protocol.
    pub protocol: SecurityProtocol,
    /// The login, with the `sasl_*` protocols.
    pub login: Option<SaslLogin>,
    /// The CA file.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Whether the broker's certificate must name its host.
    pub verify_hostname: bool,
}

impl KafkaSecurityConfig {
    /// The resolved settings, or every problem: keys relative to the `security` table.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KafkaSecurity, Vec<Problem>> {
        let mut problems = Vec::new();
        let login = if self.protocol.sasl() {
            let mut read = |key: &str, var: &Option<String>| match var {
                None => {
                    problems.push(Problem::new(
                        key,
                        format!(
                            "is required with protocol {}: the NAME of an environment variable",
                            self.protocol.as_str()
                        ),
                    ));
                    None
                }
                Some(name) => env(name).or_else(|| {
                    problems.push(Problem::new(key, format!("env var {name} is not set")));
                    None
                }),
            };
            let username = read("username_env", &self.username_env);
            let password = read("password_env", &self.password_env);
            let mechanism = self.sasl_mechanism.or_else(|| {
                problems.push(Problem::new(
                    "sasl_mechanism",
                    format!(
                        "is required with protocol {}: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
                        self.protocol.as_str()
                    ),
                ));
                None
            });
            if mechanism == Some(SaslMechanism::Plain) && !self.protocol.tls() {
                problems.push(Problem::new(
                    "sasl_mechanism",
                    "PLAIN sends the password as it is: use it only with protocol sasl_ssl",
                ));
            }
            match (username, password, mechanism) {
                (Some(username), Some(password), Some(mechanism)) => Some(SaslLogin {
                    mechanism,
                    username,
                    password: SecretString::from(password),
                    password_env: self.password_env.clone().unwrap_or_default(),
                }),
                _ => None,
            }
        } else {
            problems.extend(not_for_protocol(
                [
                    ("sasl_mechanism", self.sasl_mechanism.is_some()),
                    ("username_env", self.username_env.is_some()),
                    ("password_env", self.password_env.is_some()),
                ],
                &format!(
                    "is for a SASL login, which protocol {} does not do (use sasl_ssl)",
                    self.protocol.as_str()
                ),
            ));
            None
        };
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !self.protocol.tls() {
            problems.extend(not_for_protocol(
                files.map(|(key, path)| (key, path.is_some())),
                &format!(
                    "is for TLS, which protocol {} does not use (use ssl or sasl_ssl)",
                    self.protocol.as_str()
                ),
            ));
        }
        for (key, path) in files {
            if let Some(path) = path {
                problems.extend(config::readable_file(key, path));
            }
        }
        let client_cert = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                problems.push(Problem::new(
                    "cert_file",
                    "set both cert_file and key_file for a client certificate, or neither",
                ));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(KafkaSecurity {
            protocol: self.protocol,
            login,
            ca_file: self.ca_file.clone(),
            client_cert,
            verify_hostname: self.verify_hostname,
        })
    }
}

/// The problems of `properties` next to an optional `security` table: secrets are refused always,
/// the properties the table sets are refused when it is given. Keys are relative to the section.
pub fn property_problems(
    security: Option<&KafkaSecurityConfig>,
    properties: &BTreeMap<String, String>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for key in properties.keys() {
        if SECRET_PROPERTIES.contains(&key.as_str()) {
            problems.push(Problem::new(
                format!("properties.{key}"),
                "secrets do not belong in the config file: set security.username_env and \
                 security.password_env to the names of environment variables",
            ));
        } else if security.is_some() && SECURITY_PROPERTIES.contains(&key.as_str()) {
            problems.push(Problem::new(
                format!("properties.{key}"),
                "is set from the security table; set it there",
            ));
        }
    }
    problems
}

/// Every problem of an optional `security` table (prefixed `security.`) and its `properties`.
pub fn problems(
    security: Option<&KafkaSecurityConfig>,
    properties: &BTreeMap<String, String>,
) -> Vec<Problem> {
    let mut problems = property_problems(security, properties);
    if let Some(security) = security
        && let Err(found) = security.resolve(|name| std::env::var(name).ok())
    {
        problems.extend(found.into_iter().map(|p| p.under("security")));
    }
    problems
}

/// Resolves an optional `security` table from the process environment, as one config error
/// naming `section` (for constructors called without the loader).
pub fn resolve(
    section: &str,
    security: Option<&KafkaSecurityConfig>,
) -> engine::Result<Option<KafkaSecurity>> {
    security
        .map(|s| {
            s.resolve(|name| std::env::var(name).ok()).map_err(|found| {
                Problem::into_error(
                    section,
                    found.into_iter().map(|p| p.under("security")).collect(),
                )
            })
        })
        .transpose()
}

impl KafkaSecurity {
    /// Sets the librdkafka properties (the only place the password leaves its wrapper).
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if let Some(login) = &self.login {
            config
                .set("sasl.mechanism", login.mechanism.as_str())
                .set("sasl.username", &login.username)
                .set("sasl.password", login.password.expose_secret());
        }
        if self.protocol.tls() {
            if let Some(ca) = &self.ca_file {
                config.set("ssl.ca.location", ca.display().to_string());
            }
            if let Some((cert, key)) = &self.client_cert {
                config
                    .set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
            config.set(
                "ssl.endpoint.identification.algorithm",
                if self.verify_hostname {
                    "https"
                } else {
                    "none"
                },
            );
        }
    }

    /// How the client logs in, for messages: e.g. `sasl_ssl with SCRAM-SHA-512 as "app"`.
    pub fn describe(&self) -> String {
        match &self.login {
            Some(l) => format!(
                "{} with {} as {:?}",
                self.protocol.as_str(),
                l.mechanism.as_str(),
                l.username
            ),
            None => self.protocol.as_str().to_owned(),
        }
    }
}

/// A problem saying `why` for each key of `keys` that is set: keys the chosen protocol does not use.
fn not_for_protocol(keys: [(&'static str, bool); 3], why: &str) -> Vec<Problem> {
    keys.into_iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| Problem::new(key, why))
        .collect()
}

/// A client context that keeps the first error retrying cannot fix: a refused login, a failed
/// TLS handshake, or a protocol mismatch (plain TCP to a TLS listener). Other errors are logged
/// as librdkafka's default context does. Clones share what they saw: the producers keep one,
/// as rdkafka's `FutureProducer` wraps its context out of reach.
#[derive(Debug, Clone)]
pub struct SecurityWatch {
    fatal: Arc<Mutex<Option<String>>>,
    /// How the client was configured to log in (see [`KafkaSecurity::describe`]).
    describe: String,
}

impl SecurityWatch {
    /// A watch for a client configured with `security` (none: plain TCP).
    pub fn new(security: Option<&KafkaSecurity>) -> Self {
        Self {
            fatal: Arc::default(),
            describe: security.map_or_else(|| "plaintext".to_owned(), KafkaSecurity::describe),
        }
    }

    /// The error that must stop the client, if one happened.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(message);
        }
    }

    /// Records a connection failure that librdkafka logged (`FAIL` lines) if retrying cannot
    /// fix it. A consumer gets its error events only when polled, and then without their text,
    /// so for the source (which does not poll while it starts) this log line is the only place
    /// the reason appears; librdkafka's wording is matched, as no error code comes with it.
    fn observe_log(&self, facility: &str, message: &str) {
        if facility != "FAIL" {
            return;
        }
        let what = if message.contains("SASL authentication error")
            || message.contains("SASL handshake failed")
        {
            "the broker refused the login"
        } else if message.contains("SSL handshake failed") {
            "the TLS handshake failed"
        } else if message.contains("incorrect security.protocol")
            || (message.contains("Disconnected") && message.contains("state APIVERSION_QUERY"))
        {
            // What a TLS listener does with a plain client: it closes the connection at the
            // first bytes (the ApiVersion request). librdkafka 2.12 no longer adds its own
            // "incorrect security.protocol" hint. This counts only when the start fails too,
            // so a broker that drops one connection while restarting stops nothing.
            "the broker closed the connection at the client's first request, as a TLS listener \
             does with a client that does not use TLS (check security.protocol and the port)"
        } else {
            return;
        };
        self.record(format!("{what} (client: {}): {message}", self.describe));
    }

    /// Records `error` if retrying cannot fix it; logs it either way.
    pub fn observe(&self, error: &KafkaError, reason: &str) {
        let what = match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::UnsupportedSASLMechanism,
            ) => Some("the broker refused the login"),
            Some(RDKafkaErrorCode::SSL) => Some("the TLS handshake failed"),
            // librdkafka's own diagnosis when a plain client meets a TLS listener.
            Some(RDKafkaErrorCode::BrokerTransportFailure)
                if reason.contains("incorrect security.protocol") =>
            {
                Some("the broker closed the connection during the first request")
            }
            _ => None,
        };
        match what {
            Some(what) => {
                let message = format!("{what} (client: {}): {reason}", self.describe);
                tracing::error!(target: "librdkafka", error = %error, %message, "Kafka client cannot connect.");
                self.record(message);
            }
            None => {
                tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error.")
            }
        }
    }
}

impl ClientContext for SecurityWatch {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        SecurityWatch::log(self, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.observe(&error, reason);
    }
}

impl SecurityWatch {
    /// Logs a librdkafka log line (as rdkafka's default context does) and observes it.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message);
        self.observe_log(facility, message);
    }
}

/// A librdkafka log line as rdkafka's default context writes it, at the matching level.
fn log_line(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}"),
        L::Notice | L::Info => {
            tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KafkaSecurityConfig {
        config::from_toml("security", toml::from_str(text).unwrap()).unwrap()
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "U" => Some("app".into()),
            "P" => Some("hunter2-secret".into()),
            _ => None,
        }
    }

    #[test]
    fn sasl_ssl_reads_the_login_and_never_prints_the_password() {
        let c = parse(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername_env = \"U\"\npassword_env = \"P\"",
        );
        let s = c.resolve(env).unwrap();
        let mut rd = rdkafka::ClientConfig::new();
        s.apply(&mut rd);
        assert_eq!(rd.get("sasl.password"), Some("hunter2-secret"));
        assert_eq!(rd.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            rd.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        for printed in [
            format!("{s:?}"),
            format!("{c:?}"),
            format!("{rd:?}"),
            s.describe(),
        ] {
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        assert_eq!(s.describe(), "sasl_ssl with SCRAM-SHA-512 as \"app\"");
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let c = parse(
            "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\npassword_env = \"NOPE\"\nca_file = \"/nope.pem\"\ncert_file = \"/etc/hostname\"",
        );
        let problems: Vec<String> = c
            .resolve(env)
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "username_env: is required with protocol sasl_plaintext: the NAME of an environment variable",
                "password_env: env var NOPE is not set",
                "sasl_mechanism: PLAIN sends the password as it is: use it only with protocol sasl_ssl",
                "ca_file: is for TLS, which protocol sasl_plaintext does not use (use ssl or sasl_ssl)",
                "cert_file: is for TLS, which protocol sasl_plaintext does not use (use ssl or sasl_ssl)",
                "ca_file: cannot read /nope.pem: No such file or directory",
                "cert_file: set both cert_file and key_file for a client certificate, or neither",
            ]
        );
        let err = config::from_toml::<KafkaSecurityConfig>(
            "security",
            toml::from_str("protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SCRAM-SHA-512"), "{err}");
    }

    #[test]
    fn the_watch_keeps_the_first_failure_that_retrying_cannot_fix() {
        let watch = SecurityWatch::new(None);
        // Not a connection failure, and a refused connection (a broker that is down): kept out.
        watch.observe_log("SASL", "SASL authentication error: noise at debug level");
        watch.observe_log("FAIL", "127.0.0.1:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused (after 0ms in state CONNECT)");
        assert_eq!(watch.fatal(), None);
        let clone = watch.clone();
        clone.observe_log("FAIL", "127.0.0.1:9093/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)");
        watch.observe_log(
            "FAIL",
            "sasl_ssl://h:9093/bootstrap: SASL authentication error: Authentication failed",
        );
        let fatal = watch.fatal().unwrap();
        assert!(
            fatal.starts_with("the broker closed the connection at the client's first request"),
            "{fatal}"
        );
        assert!(fatal.contains("(client: plaintext)"), "{fatal}");
        let tls = SecurityWatch::new(None);
        tls.observe_log("FAIL", "ssl://h:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed");
        assert!(tls.fatal().unwrap().starts_with("the TLS handshake failed"));
    }

    #[test]
    fn secrets_in_properties_are_refused() {
        let properties: BTreeMap<String, String> = [
            ("sasl.password".to_owned(), "x".to_owned()),
            ("security.protocol".to_owned(), "SSL".to_owned()),
        ]
        .into();
        let without: Vec<String> = property_problems(None, &properties)
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(without.len(), 1, "{without:?}");
        assert!(without[0].starts_with("properties.sasl.password: secrets do not belong"));
        let c = parse("protocol = \"ssl\"");
        assert_eq!(property_problems(Some(&c), &properties).len(), 2);
    }
}
