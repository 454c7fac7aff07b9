//! herald-sink driven by real SMTP clients (lettre, and raw pipelined sessions) over
//! loopback, its counts read over HTTP.

use std::path::{Path, PathBuf};

use herald_sink::{Application, BlastSettings, MessageArrival, Settings, Stats};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// A sink on free loopback ports, stopped on drop.
struct TestSink {
    smtp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    shutdown: CancellationToken,
    client: reqwest::Client,
}

impl TestSink {
    async fn start(maildir: Option<&Path>) -> Self {
        let application = Application::build(Settings {
            smtp_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            maildir: maildir.map(Path::to_owned),
            ..Settings::default()
        })
        .await
        .expect("binding the sink");
        let sink = Self {
            smtp: application.smtp_local_addr(),
            http: application.http_local_addr(),
            shutdown: CancellationToken::new(),
            client: reqwest::Client::new(),
        };
        tokio::spawn(application.run_until_stopped(sink.shutdown.clone()));
        sink
    }

    async fn stats(&self) -> Stats {
        self.client
            .get(format!("http://{}/stats", self.http))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /stats")
            .json()
            .await
            .expect("stats as JSON")
    }

    async fn reset(&self) -> Stats {
        self.client
            .post(format!("http://{}/reset", self.http))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("POST /reset")
            .json()
            .await
            .expect("stats as JSON")
    }

    /// `GET /messages/<path>`: the arrival, or `None` on 404.
    async fn message(&self, path: &str) -> Option<MessageArrival> {
        let response = self
            .client
            .get(format!("http://{}/messages/{path}", self.http))
            .send()
            .await
            .expect("GET /messages/..");
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        Some(
            response
                .error_for_status()
                .expect("GET /messages/..")
                .json()
                .await
                .expect("an arrival as JSON"),
        )
    }

    fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.smtp.ip().to_string())
            .port(self.smtp.port())
            .build()
    }

    /// Writes `session` in one go, then reads until the sink closes the connection.
    async fn raw_session(&self, session: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.smtp)
            .await
            .expect("connecting");
        stream
            .write_all(session.as_bytes())
            .await
            .expect("writing the session");
        let mut replies = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_string(&mut replies),
        )
        .await
        .expect("the sink should close the connection after QUIT")
        .expect("reading the replies");
        replies
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn email(message_id: Option<&str>, body: &str) -> Message {
    let builder = Message::builder()
        .from("Herald <noreply@herald.test>".parse().unwrap())
        .to("ada@example.com".parse().unwrap())
        .subject("hello")
        .header(ContentType::TEXT_PLAIN);
    let builder = match message_id {
        Some(id) => builder.message_id(Some(id.to_owned())),
        None => builder,
    };
    builder.body(body.to_owned()).unwrap()
}

/// The code of each reply (the last line of a multi-line reply).
fn reply_codes(replies: &str) -> Vec<&str> {
    replies
        .lines()
        .filter(|line| line.as_bytes().get(3) != Some(&b'-'))
        .map(|line| &line[..3])
        .collect()
}

/// The files in `maildir/new`, contents in name order (names grow with time and sequence).
fn stored(maildir: &Path) -> Vec<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    names.sort_by_key(|path| {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // <secs>.M<micros>P<pid>Q<seq>.herald-sink: order by the sequence number.
        name.split('Q')
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .and_then(|sequence| sequence.parse::<u64>().ok())
            .unwrap_or(0)
    });
    names
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

#[tokio::test]
async fn lettre_messages_are_counted_by_message_id_and_a_resend_is_a_duplicate() {
    let sink = TestSink::start(None).await;
    let transport = sink.transport();
    for id in ["<a@herald>", "<b@herald>", "<a@herald>"] {
        transport.send(email(Some(id), "hi")).await.unwrap();
    }
    assert_eq!(
        sink.stats().await,
        Stats {
            messages: 3,
            distinct: 2,
            duplicates: 1,
            without_message_id: 0,
        }
    );
}

#[tokio::test]
async fn dot_stuffed_lines_are_stored_unstuffed() {
    let maildir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(Some(maildir.path())).await;
    let body = "first\r\n.hidden\r\n..two dots\r\n.\r\nlast\r\n";
    sink.transport()
        .send(email(Some("<dots@herald>"), body))
        .await
        .unwrap();
    let files = stored(maildir.path());
    assert_eq!(files.len(), 1);
    assert!(
        files[0].contains("\r\n\r\nfirst\r\n.hidden\r\n..two dots\r\n.\r\nlast\r\n"),
        "the body should arrive as sent: {:?}",
        files[0]
    );
    assert!(files[0].starts_with("X-Peer: 127.0.0.1:"));
    assert!(files[0].contains("X-MailFrom: noreply@herald.test\r\nX-RcptTo: ada@example.com\r\n"));
    assert!(
        std::fs::read_dir(maildir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "tmp/ is empty once a message is renamed into new/"
    );
    assert_eq!(sink.stats().await.distinct, 1);
}

#[tokio::test]
async fn a_whole_pipelined_session_in_one_write_gets_every_reply_in_order() {
    let maildir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(Some(maildir.path())).await;
    let session = concat!(
        "EHLO pipeliner\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "RCPT TO:<c@example.com>\r\n",
        "DATA\r\n",
        "Message-ID: <p1@herald>\r\n",
        "Subject: pipelined\r\n",
        "\r\n",
        "..leading dot\r\n",
        "line\r\n",
        ".\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
        "message-id: <p1@herald>\r\n",
        "\r\n",
        "again\r\n",
        ".\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
    );
    let replies = sink.raw_session(session).await;
    assert_eq!(
        reply_codes(&replies),
        [
            "220", "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "250",
            "221"
        ],
        "replies: {replies}"
    );
    assert!(replies.contains("250-PIPELINING\r\n"));
    let files = stored(maildir.path());
    assert_eq!(files.len(), 2);
    assert!(
        files[0].ends_with(
            "X-RcptTo: b@example.com, c@example.com\r\nMessage-ID: <p1@herald>\r\nSubject: pipelined\r\n\r\n.leading dot\r\nline\r\n"
        ),
        "first message: {:?}",
        files[0]
    );
    assert!(files[1].ends_with("\r\nmessage-id: <p1@herald>\r\n\r\nagain\r\n"));
    assert_eq!(
        sink.stats().await,
        Stats {
            messages: 2,
            distinct: 1,
            duplicates: 1,
            without_message_id: 0,
        }
    );
}

#[tokio::test]
async fn commands_out_of_order_are_refused_and_nothing_is_counted() {
    let sink = TestSink::start(None).await;
    let session = concat!(
        "MAIL FROM:<a@example.com>\r\n",
        "HELO old-client\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "DATA\r\n",
        "RSET\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "STARTTLS\r\n",
        "FROB\r\n",
        "QUIT\r\n",
    );
    let replies = sink.raw_session(session).await;
    assert_eq!(
        reply_codes(&replies),
        [
            "220", "503", "250", "503", "503", "250", "503", "503", "250", "503", "502", "500",
            "221"
        ],
        "replies: {replies}"
    );
    assert_eq!(sink.stats().await, Stats::default());
}

#[tokio::test]
async fn a_message_without_a_message_id_is_counted_apart() {
    let sink = TestSink::start(None).await;
    let session = concat!(
        "HELO raw\r\n",
        "MAIL FROM:<>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
        "Subject: no id\r\n",
        "\r\n",
        "body\r\n",
        ".\r\n",
        "QUIT\r\n",
    );
    let replies = sink.raw_session(session).await;
    assert_eq!(
        reply_codes(&replies),
        ["220", "250", "250", "250", "354", "250", "221"]
    );
    assert_eq!(
        sink.stats().await,
        Stats {
            messages: 1,
            distinct: 0,
            duplicates: 0,
            without_message_id: 1,
        }
    );
}

#[tokio::test]
async fn reset_answers_the_counts_before_it_and_starts_again() {
    let sink = TestSink::start(None).await;
    let transport = sink.transport();
    transport
        .send(email(Some("<r@herald>"), "x"))
        .await
        .unwrap();
    let before = sink.reset().await;
    assert_eq!((before.messages, before.distinct), (1, 1));
    assert_eq!(sink.stats().await, Stats::default());
    transport
        .send(email(Some("<r@herald>"), "x"))
        .await
        .unwrap();
    let after = sink.stats().await;
    assert_eq!(
        (after.distinct, after.duplicates),
        (1, 0),
        "the reset forgot the id"
    );
}

fn unix_ms_now() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_message_arrival_is_served_by_its_message_id_without_angle_brackets() {
    let sink = TestSink::start(None).await;
    let transport = sink.transport();
    assert_eq!(
        sink.message("d-1@herald").await,
        None,
        "nothing arrived yet"
    );
    let before = unix_ms_now();
    transport
        .send(email(Some("<d-1@herald>"), "first"))
        .await
        .unwrap();
    let after = unix_ms_now();
    let arrival = sink.message("d-1@herald").await.expect("arrived");
    assert_eq!(arrival.message_id, "<d-1@herald>");
    assert_eq!(arrival.copies, 1);
    assert!(
        (before..=after).contains(&arrival.arrived_at_unix_ms),
        "the arrival {} is on the wall clock, between {before} and {after}",
        arrival.arrived_at_unix_ms
    );
    assert_eq!(
        sink.message("%3Cd-1@herald%3E").await.as_ref(),
        Some(&arrival),
        "with its angle brackets, percent-encoded, it is found too"
    );
    assert_eq!(sink.message("d-2@herald").await, None);
}

#[tokio::test]
async fn a_resent_message_keeps_its_first_arrival_and_counts_copies() {
    let sink = TestSink::start(None).await;
    let transport = sink.transport();
    transport
        .send(email(Some("<again@herald>"), "x"))
        .await
        .unwrap();
    let first = sink.message("again@herald").await.expect("arrived");
    transport
        .send(email(Some("<again@herald>"), "x"))
        .await
        .unwrap();
    let second = sink.message("again@herald").await.expect("arrived");
    assert_eq!(second.copies, 2);
    assert_eq!(second.arrived_at_unix_ms, first.arrived_at_unix_ms);
    sink.reset().await;
    assert_eq!(
        sink.message("again@herald").await,
        None,
        "a reset forgets arrivals"
    );
}

#[tokio::test]
async fn a_bare_message_id_is_found_as_sent() {
    let sink = TestSink::start(None).await;
    let session = concat!(
        "HELO raw\r\n",
        "MAIL FROM:<>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
        "Message-ID: bare-id@example.com\r\n",
        "\r\n",
        "body\r\n",
        ".\r\n",
        "QUIT\r\n",
    );
    sink.raw_session(session).await;
    let arrival = sink.message("bare-id@example.com").await.expect("arrived");
    assert_eq!(
        (arrival.message_id.as_str(), arrival.copies),
        ("bare-id@example.com", 1)
    );
}

#[tokio::test]
async fn blast_over_many_connections_delivers_every_message_exactly_once() {
    let sink = TestSink::start(None).await;
    let report = herald_sink::blast(&BlastSettings {
        to: sink.smtp.to_string(),
        connections: 48,
        count: 2_000,
        nagle: false,
    })
    .await
    .unwrap();
    assert_eq!((report.sent, report.failed, report.unsent), (2_000, 0, 0));
    assert!(report.messages_per_second() > 0.0);
    assert_eq!(
        sink.stats().await,
        Stats {
            messages: 2_000,
            distinct: 2_000,
            duplicates: 0,
            without_message_id: 0,
        }
    );
}

#[tokio::test]
async fn blast_fails_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = herald_sink::blast(&BlastSettings {
        to: format!("127.0.0.1:{port}"),
        connections: 1,
        count: 1,
        nagle: false,
    })
    .await;
    assert!(
        matches!(result, Err(herald_sink::Error::Connect { .. })),
        "{result:?}"
    );
}
