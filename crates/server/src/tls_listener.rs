//! The client listener with TLS: each accepted connection's handshake runs in a task of
//! its own (a slow or silent client never holds up the others), bounded in number and
//! time; finished streams go to the gRPC server in the order they complete.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// Handshakes in progress at once; beyond it new connections wait for a slot.
const HANDSHAKES_MAX: usize = 256;
/// Time a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Finished connections waiting for the gRPC server to take them.
const READY_MAX: usize = 64;

/// TLS streams from `accepted` plain connections.
pub fn incoming(
    accepted: impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (ready, taken) = tokio::sync::mpsc::channel(READY_MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        while let Some(stream) = accepted.next().await {
            let Ok(stream) = stream else { continue };
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
            let (acceptor, ready) = (acceptor.clone(), ready.clone());
            let remote = stream.peer_addr().ok();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(?remote, "client TLS handshake failed: {error}");
                    }
                    Err(_) => tracing::debug!(?remote, "client TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(taken)
}
