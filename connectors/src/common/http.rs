//! A small HTTP/1.1 GET client (hyper over [`super::tls`]) with a time limit per request, for
//! polling REST APIs. It returns every response, whatever its status: deciding what a status
//! means (retry, back off, fail) is the venue connector's job.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("coinstream/", env!("CARGO_PKG_VERSION"));

/// A response, with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The header `name` as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request got no response. The message never repeats the source's (hyper's messages,
/// e.g. "client error (Connect)", only make sense with their causes: print the chain with
/// [`engine::report`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be requested.
    #[error("invalid URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// No complete response within the time limit.
    #[error("GET {url}: no response within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// Connecting or sending failed, or the response head was bad.
    #[error("GET {url}")]
    Request {
        /// The URL.
        url: String,
        /// The underlying error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The body broke off.
    #[error("GET {url}: reading the body")]
    Body {
        /// The URL.
        url: String,
        /// The underlying error.
        #[source]
        source: hyper::Error,
    },
}

impl HttpError {
    /// A bad URL is permanent (retrying sends the same URL); no response in time, a failed
    /// connection and a body that broke off are transient.
    pub fn retry(&self) -> engine::Retry {
        match self {
            HttpError::Url { .. } => engine::Retry::Permanent,
            HttpError::Timeout { .. } | HttpError::Request { .. } | HttpError::Body { .. } => {
                engine::Retry::Transient
            }
        }
    }
}

/// A pooled HTTP(S) client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose requests (including reading the body) fail after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*super::tls::client_config()).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, timeout }
    }

    /// GETs `url` and reads the whole body.
    pub async fn get(&self, url: &str) -> Result<Response, HttpError> {
        let request = Request::get(url)
            .header("user-agent", USER_AGENT)
            .header("accept", "application/json")
            .body(Empty::new())
            .map_err(|e| HttpError::Url {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| HttpError::Request {
                        url: url.to_owned(),
                        source,
                    })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|source| HttpError::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(HttpError::Timeout {
                    url: url.to_owned(),
                    after: self.timeout,
                })
            })
    }
}
