//! The peers the bench's phases are tested against over loopback: a SubmitService that
//! answers from a script, and a herald-sink's HTTP counters.

use super::*;

/// Accepts every submit except those whose idempotency key ends in `7` (UNAVAILABLE), and
/// reports each notification IN_PROGRESS on its first poll and DELIVERED, 5 ms after its
/// creation, from the second on. Notification ids are the idempotency keys. Each submit takes
/// `delay`, one at a time when `serial`; with a `sink`, each accepted one arrives there
/// `sink.arrival_delay` later. A `draining` one answers every submit UNAVAILABLE, as a server
/// shutting down does.
#[derive(Debug, Default)]
pub(super) struct FakeSubmitService {
    pub(super) draining: bool,
    pub(super) notifications: Mutex<HashMap<String, (prost_types::Timestamp, u32)>>,
    pub(super) delay: Duration,
    pub(super) serial: tokio::sync::Mutex<()>,
    pub(super) serialize: bool,
    pub(super) sink: Option<Arc<FakeSink>>,
}

#[tonic::async_trait]
impl SubmitService for FakeSubmitService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let _one_at_a_time = if self.serialize {
            Some(self.serial.lock().await)
        } else {
            None
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let key = request.into_inner().idempotency_key;
        if self.draining || key.ends_with('7') {
            return Err(Status::unavailable("try again"));
        }
        let created_at = herald_proto::conversions::timestamp(Utc::now());
        self.notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), (created_at, 0));
        if let Some(sink) = &self.sink {
            sink.arrive_later();
        }
        Ok(Response::new(SubmitResponse {
            notification_id: key,
            duplicate: false,
        }))
    }

    /// Not used by the bench yet (`--batch` is to come).
    async fn submit_batch(
        &self,
        _request: Request<herald_proto::submit::SubmitBatchRequest>,
    ) -> Result<Response<herald_proto::submit::SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("the fake has no SubmitBatch"))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let id = request.into_inner().notification_id;
        let mut notifications = self
            .notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((created_at, polls)) = notifications.get_mut(&id) else {
            return Err(Status::not_found("no such notification"));
        };
        *polls += 1;
        let delivered_at = herald_proto::conversions::instant(created_at)
            .filter(|_| *polls >= 2)
            .map(|created| {
                herald_proto::conversions::timestamp(created + chrono::Duration::milliseconds(5))
            });
        let (status, state) = if delivered_at.is_some() {
            (NotificationStatus::Delivered, DeliveryState::Delivered)
        } else {
            (NotificationStatus::InProgress, DeliveryState::Queued)
        };
        Ok(Response::new(GetNotificationResponse {
            notification: Some(Notification {
                id,
                status: status as i32,
                created_at: Some(*created_at),
                deliveries: vec![Delivery {
                    state: state as i32,
                    attempts: 1,
                    delivered_at,
                    ..Delivery::default()
                }],
                ..Notification::default()
            }),
        }))
    }
}

/// Two plaintext channels to a fake SubmitService on a loopback port.
pub(super) async fn fake_server() -> anyhow::Result<Vec<Channel>> {
    fake_server_with(FakeSubmitService::default()).await
}

pub(super) async fn fake_server_with(service: FakeSubmitService) -> anyhow::Result<Vec<Channel>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubmitServiceServer::new(service))
            .serve_with_incoming(incoming),
    );
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?;
    Ok(vec![endpoint.connect().await?, endpoint.connect().await?])
}

/// A stand-in for herald-sink's `GET /stats`: counts that start at `baseline` and grow by
/// one distinct message `arrival_delay` after each accepted submit (plus `duplicate_every`:
/// every n-th arrival is also resent).
#[derive(Debug)]
pub(super) struct FakeSink {
    pub(super) stats: Mutex<SinkStats>,
    pub(super) arrivals: AtomicU64,
    pub(super) arrival_delay: Duration,
    pub(super) duplicate_every: Option<u64>,
    /// Stops all arrivals (a platform that never delivers).
    pub(super) stalled: bool,
}

impl FakeSink {
    pub(super) fn new(baseline: SinkStats) -> Self {
        Self {
            stats: Mutex::new(baseline),
            arrivals: AtomicU64::new(0),
            arrival_delay: Duration::from_millis(5),
            duplicate_every: None,
            stalled: false,
        }
    }

    pub(super) fn arrive_later(self: &Arc<Self>) {
        if self.stalled {
            return;
        }
        let sink = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(sink.arrival_delay).await;
            let arrival = sink.arrivals.fetch_add(1, Ordering::AcqRel) + 1;
            let mut stats = sink.stats.lock().unwrap_or_else(PoisonError::into_inner);
            stats.messages += 1;
            stats.distinct += 1;
            if sink
                .duplicate_every
                .is_some_and(|every| arrival.is_multiple_of(every))
            {
                stats.messages += 1;
                stats.duplicates += 1;
            }
        });
    }

    /// Serves `GET /stats` on a loopback port, one request per connection, as herald-sink
    /// answers it (JSON with a Content-Length); returns its URL.
    pub(super) async fn serve(self: &Arc<Self>) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let sink = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0_u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let stats = *sink.stats.lock().unwrap_or_else(PoisonError::into_inner);
                    let body = serde_json::json!({
                        "messages": stats.messages,
                        "distinct": stats.distinct,
                        "duplicates": stats.duplicates,
                        "without_message_id": 0,
                    })
                    .to_string();
                    let response = if request.starts_with(b"GET /stats ") {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    };
                    let _written = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(format!("http://{address}"))
    }
}
