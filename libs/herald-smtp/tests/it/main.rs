//! `SmtpPool` against a minimal SMTP server on loopback that counts connections, messages and
//! `NOOP`s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_smtp::lettre::Address;
use herald_smtp::lettre::address::Envelope;
use herald_smtp::{SmtpPool, SmtpSettings};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    messages: AtomicUsize,
    noops: AtomicUsize,
}

/// Accepts SMTP on a free loopback port and answers every command positively.
async fn smtp_server() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(session(socket, Arc::clone(&seen)));
            }
        }
    });
    (port, seen)
}

async fn session(socket: tokio::net::TcpStream, seen: Arc<Seen>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 test ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let command = line.to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-test\r\n250 8BITMIME\r\n"
        } else if command.starts_with("DATA") {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            while let Ok(Some(body)) = lines.next_line().await {
                if body == "." {
                    break;
                }
            }
            seen.messages.fetch_add(1, Ordering::SeqCst);
            b"250 queued\r\n"
        } else if command.starts_with("NOOP") {
            seen.noops.fetch_add(1, Ordering::SeqCst);
            b"250 ok\r\n"
        } else if command.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn envelope(index: usize) -> Envelope {
    let from: Address = "noreply@herald.local".parse().unwrap();
    let to: Address = format!("user{index}@example.com").parse().unwrap();
    Envelope::new(Some(from), vec![to]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sends_share_at_most_max_connections_without_a_noop_each() {
    let (port, seen) = smtp_server().await;
    let settings = SmtpSettings {
        port,
        ..SmtpSettings::default()
    };
    let pool = Arc::new(SmtpPool::new(&settings, 4).unwrap());

    let sends = (0..200).map(|index| {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            pool.send(&envelope(index), b"Subject: hi\r\n\r\nhello\r\n")
                .await
                .map(|response| response.code().to_string())
        })
    });
    let replies = futures::future::join_all(sends).await;

    for reply in replies {
        assert_eq!(reply.unwrap().unwrap(), "250");
    }
    assert_eq!(seen.messages.load(Ordering::SeqCst), 200);
    let connections = seen.connections.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&connections),
        "200 concurrent sends over at most 4 connections: {connections} opened"
    );
    assert_eq!(
        seen.noops.load(Ordering::SeqCst),
        0,
        "connections in use are not checked before each message"
    );
}
