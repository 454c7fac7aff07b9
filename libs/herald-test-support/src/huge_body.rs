//! An HTTP peer that answers every request with a huge body, for testing that a provider's
//! response is read with a size limit: it records whether a client took the whole body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;

/// The size of the body, far beyond what the socket buffers between the two ends can hold,
/// so a client that stops reading early leaves most of it unsent.
pub const HUGE_BODY_BYTES: usize = 64 * 1024 * 1024;

const CHUNK_BYTES: usize = 64 * 1024;

/// Serves every path and method on loopback with `status` and a chunked `HUGE_BODY_BYTES`
/// body that starts like JSON (`{"padding":"xxxx…`) and never closes it.
pub struct HugeBodyServer {
    address: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    sent_whole_body: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HugeBodyServer {
    /// Starts the server.
    ///
    /// # Panics
    /// When no loopback port is free or `status` is not an HTTP status.
    pub async fn start(status: u16) -> Self {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        let requests = Arc::new(AtomicUsize::new(0));
        let sent_whole_body = Arc::new(AtomicBool::new(false));
        let (counted, sent) = (Arc::clone(&requests), Arc::clone(&sent_whole_body));
        let app = Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let sent = Arc::clone(&sent);
            async move { huge(status, sent) }
        });
        let (address, task) = crate::serve(app).await;
        Self {
            address,
            requests,
            sent_whole_body,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How many requests it answered.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Whether a client took a whole body: every chunk was handed to the connection. A
    /// client that stops reading early never lets the last one through.
    pub fn sent_whole_body(&self) -> bool {
        self.sent_whole_body.load(Ordering::SeqCst)
    }
}

impl Drop for HugeBodyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn huge(status: StatusCode, sent: Arc<AtomicBool>) -> Response {
    let chunk = Bytes::from(vec![b'x'; CHUNK_BYTES]);
    let chunks = HUGE_BODY_BYTES / CHUNK_BYTES;
    let stream = tokio_stream::StreamExt::map(tokio_stream::iter(0..=chunks), move |index| {
        Ok::<_, std::io::Error>(match index {
            0 => Bytes::from_static(b"{\"padding\":\""),
            // Asked for only once every chunk before it was taken.
            last if last == chunks => {
                sent.store(true, Ordering::SeqCst);
                Bytes::new()
            }
            _ => chunk.clone(),
        })
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
