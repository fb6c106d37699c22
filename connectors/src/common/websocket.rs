//! Opening a WebSocket client connection (`ws://` or `wss://` over [`super::tls`]) with a time
//! limit. What to send and how to read belongs to the venue's connector.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// An open client connection.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `url`; TCP, TLS and the handshake together must finish within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<WsStream, tungstenite::Error> {
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        // Feed frames are small and latency matters more than packet count.
        true,
        Some(Connector::Rustls(super::tls::client_config())),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok((stream, _response))) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        ))),
    }
}
