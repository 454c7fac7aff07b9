//! `SmtpPool` against a minimal SMTP server on loopback that counts connections, messages and
//! `NOOP`s, and can misbehave at a chosen point of the conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// How the server behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers every command positively.
    Answer,
    /// Accepts connections and never says a word (no greeting).
    Mute,
    /// Takes the whole message, then never answers its final `.`.
    SilentAfterMessage,
    /// Takes the whole message, then closes the connection without answering.
    HangUpAfterMessage,
}

/// Accepts SMTP on a free loopback port and answers every command positively.
async fn smtp_server() -> (u16, Arc<Seen>) {
    smtp_server_behaving(Behaviour::Answer).await
}

/// Accepts SMTP on a free loopback port, behaving as `behaviour` says.
async fn smtp_server_behaving(behaviour: Behaviour) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(session(socket, Arc::clone(&seen), behaviour));
            }
        }
    });
    (port, seen)
}

async fn session(socket: tokio::net::TcpStream, seen: Arc<Seen>, behaviour: Behaviour) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    if behaviour == Behaviour::Mute {
        // Hold the connection open, reading and never answering.
        while let Ok(Some(_)) = lines.next_line().await {}
        return;
    }
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
            match behaviour {
                Behaviour::SilentAfterMessage => {
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return;
                }
                Behaviour::HangUpAfterMessage => return,
                Behaviour::Answer | Behaviour::Mute => {}
            }
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

/// One send with a short timeout to a server behaving as `behaviour`: its error and what the
/// server saw.
async fn failed_send(behaviour: Behaviour) -> (herald_smtp::PoolError, Arc<Seen>) {
    let (port, seen) = smtp_server_behaving(behaviour).await;
    let settings = SmtpSettings {
        port,
        timeout: Duration::from_millis(300),
        ..SmtpSettings::default()
    };
    let pool = SmtpPool::new(&settings, 1).unwrap();
    let error = pool
        .send(&envelope(0), b"Subject: hi\r\n\r\nhello\r\n")
        .await
        .unwrap_err();
    (error, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_whose_reply_never_comes_has_an_unknown_outcome() {
    let (error, seen) = failed_send(Behaviour::SilentAfterMessage).await;

    assert!(
        matches!(error, herald_smtp::PoolError::Unconfirmed(None)),
        "{error:?}"
    );
    assert!(error.outcome_unknown());
    assert_eq!(
        seen.messages.load(Ordering::SeqCst),
        1,
        "the relay had the whole message"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_lost_after_the_message_leaves_its_outcome_unknown() {
    let (error, seen) = failed_send(Behaviour::HangUpAfterMessage).await;

    assert!(
        matches!(error, herald_smtp::PoolError::Unconfirmed(Some(_))),
        "{error:?}"
    );
    assert!(error.outcome_unknown());
    assert_eq!(seen.messages.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_never_greets_times_out_before_anything_is_sent() {
    let (error, seen) = failed_send(Behaviour::Mute).await;

    assert!(
        matches!(error, herald_smtp::PoolError::ConnectTimeout),
        "{error:?}"
    );
    assert!(!error.outcome_unknown(), "nothing was handed over");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(seen.messages.load(Ordering::SeqCst), 0);
}
