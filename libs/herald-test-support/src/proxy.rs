//! A TCP proxy on loopback that a test can cut and restore: the way to take PostgreSQL,
//! RabbitMQ or an SMTP server away from one test's services without touching the shared
//! servers other tests use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const UP: u8 = 0;
const DOWN: u8 = 1;
const STALLED: u8 = 2;

/// Forwards connections from its own port to `target` until cut.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    state: Arc<AtomicU8>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`.
    ///
    /// # Panics
    /// When no loopback port is free.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(AtomicU8::new(UP));
        let (generation, _) = watch::channel(0_u64);
        let task = tokio::spawn(accept(
            listener,
            target,
            Arc::clone(&state),
            generation.clone(),
        ));
        Self {
            address,
            state,
            generation,
            task,
        }
    }

    /// The address clients should use instead of the target's.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `url` with `target`'s `host:port` replaced by the proxy's.
    pub fn rewrite(&self, url: &str, target: SocketAddr) -> String {
        url.replace(&target.to_string(), &self.address.to_string())
            .replace(
                &format!("localhost:{}", target.port()),
                &self.address.to_string(),
            )
    }

    /// Drops every open connection and refuses new ones, like a server that went away.
    pub fn cut(&self) {
        self.state.store(DOWN, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Keeps connections open but stops forwarding in both directions, like a hung server.
    pub fn stall(&self) {
        self.state.store(STALLED, Ordering::SeqCst);
    }

    /// Accepts and forwards again.
    pub fn restore(&self) {
        self.state.store(UP, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|generation| *generation += 1);
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<AtomicU8>,
    generation: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if state.load(Ordering::SeqCst) == DOWN {
            drop(client);
            continue;
        }
        let mut cut = generation.subscribe();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = cut.changed() => {}
                () = forward(client, server, state) => {}
            }
        });
    }
}

/// Copies both ways until either side closes; while stalled, holds the bytes back.
async fn forward(client: TcpStream, server: TcpStream, state: Arc<AtomicU8>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, Arc::clone(&state)) => {}
        () = pump(server_read, client_write, state) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<AtomicU8>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        while state.load(Ordering::SeqCst) == STALLED {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
