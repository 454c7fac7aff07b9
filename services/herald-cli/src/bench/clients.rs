//! The bench's submit clients over one or more API servers (`--server`, `--also-server`), and
//! the resend to the next server after a transport failure.

use std::sync::Arc;

use herald_proto::submit::SubmitResponse;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use tonic::transport::Channel;

use super::{SubmitPlan, send_submit, send_submit_batch};
use crate::cli::{BenchArgs, ConnectionArgs};
use crate::client::connect;

/// One client per connection; connection `i` goes to server `i mod servers`, so the next
/// connection after any one is on the next server.
#[derive(Clone)]
pub(super) struct Clients {
    clients: Arc<[SubmitServiceClient<Channel>]>,
    servers: usize,
}

impl Clients {
    /// Clients over `channels`, which `open` laid out over `servers` servers.
    pub(super) fn new(channels: &[Channel], servers: usize) -> Self {
        Self {
            clients: channels
                .iter()
                .map(|channel| SubmitServiceClient::new(channel.clone()))
                .collect(),
            servers: servers.max(1),
        }
    }

    /// How many clients there are.
    pub(super) fn len(&self) -> usize {
        self.clients.len()
    }

    fn client(&self, first: usize, resends: u64) -> SubmitServiceClient<Channel> {
        let index = (first + usize::try_from(resends).unwrap_or(usize::MAX)) % self.clients.len();
        self.clients[index].clone()
    }

    /// Whether a call that failed with `status` after `resends` resends goes to the next
    /// server: a transport failure (its server restarting, draining or unreachable), while a
    /// server not yet tried is left.
    fn resend(&self, status: &tonic::Status, resends: u64) -> bool {
        let tried = usize::try_from(resends)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        tried < self.servers
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            )
    }

    /// Sends submit `index` of `plan` through connection `first`, and after a transport
    /// failure to each other server in turn. Returns the answer and how many resends it took.
    pub(super) async fn submit(
        &self,
        first: usize,
        plan: &SubmitPlan,
        index: u64,
    ) -> (Result<SubmitResponse, tonic::Status>, u64) {
        let mut resends = 0;
        loop {
            match send_submit(&mut self.client(first, resends), plan, index).await {
                Err(status) if self.resend(&status, resends) => resends += 1,
                answer => return (answer, resends),
            }
        }
    }

    /// Sends submits `indices` of `plan` in one `SubmitBatch` call as `submit` sends one. One
    /// result per index (the call's own error for each when the whole call failed).
    pub(super) async fn submit_batch(
        &self,
        first: usize,
        plan: &SubmitPlan,
        indices: std::ops::Range<u64>,
    ) -> (Vec<Result<SubmitResponse, tonic::Status>>, u64) {
        let mut resends = 0;
        loop {
            match send_submit_batch(&mut self.client(first, resends), plan, indices.clone()).await {
                Err(status) if self.resend(&status, resends) => resends += 1,
                Err(status) => {
                    let count = indices.end - indices.start;
                    return ((0..count).map(|_| Err(status.clone())).collect(), resends);
                }
                Ok(results) => return (results, resends),
            }
        }
    }
}

/// Opens `--connections` connections over `--server` and every `--also-server`, rounded up to
/// a multiple of the servers, connection `i` to server `i mod servers`; returns them and their
/// submit clients.
pub(super) async fn open(
    args: &BenchArgs,
    connection: &ConnectionArgs,
) -> anyhow::Result<(Vec<Channel>, Clients)> {
    let servers: Vec<ConnectionArgs> = std::iter::once(connection.clone())
        .chain(args.also_servers.iter().map(|server| ConnectionArgs {
            server: server.clone(),
            ..connection.clone()
        }))
        .collect();
    let count = (args.connections as usize).max(1).div_ceil(servers.len()) * servers.len();
    let mut channels = Vec::with_capacity(count);
    for index in 0..count {
        let server = &servers[index % servers.len()];
        channels.push(connect(server, &server.certificates()).await?);
    }
    let clients = Clients::new(&channels, servers.len());
    Ok((channels, clients))
}
