//! `queues`: AdminService's queue figures, one row per channel queue and priority lane.

use herald_proto::admin::admin_service_client::AdminServiceClient;
use herald_proto::admin::{GetQueueStatsRequest, GetQueueStatsResponse};

use crate::Outcome;
use crate::cli::{ConnectionArgs, QueuesArgs};
use crate::client::{connect, rpc_error};
use crate::display;

/// Prints the queue figures as a table, or JSON with `--json`.
pub(crate) async fn run(args: &QueuesArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let mut client =
        AdminServiceClient::new(connect(connection, &connection.certificates()).await?);
    let stats = client
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .map_err(|status| rpc_error(&status))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&stats))?);
    } else {
        print!("{}", to_text(&stats));
    }
    if !stats.broker_error.is_empty() {
        eprintln!("RabbitMQ counts missing: {}", stats.broker_error);
    }
    Ok(Outcome::Success)
}

fn duration(value: Option<&prost_types::Duration>) -> Option<std::time::Duration> {
    std::time::Duration::try_from(*value?).ok()
}

fn duration_text(value: Option<&prost_types::Duration>) -> String {
    duration(value).map_or_else(
        || "-".into(),
        |value| format!("{:.3}s", value.as_secs_f64()),
    )
}

fn count_text(value: Option<u32>) -> String {
    value.map_or_else(|| "-".into(), |value| value.to_string())
}

/// One row per queue and lane; a queue without lanes gets one row with its broker counts.
fn to_text(stats: &GetQueueStatsResponse) -> String {
    let mut rows: Vec<[String; 10]> = Vec::new();
    for queue in &stats.queues {
        let broker = [
            queue.queue.clone(),
            count_text(queue.ready_messages),
            count_text(queue.consumers),
            count_text(queue.dead_lettered),
        ];
        if queue.lanes.is_empty() {
            rows.push([
                broker[0].clone(),
                broker[1].clone(),
                broker[2].clone(),
                broker[3].clone(),
                "-".into(),
                "0".into(),
                "-".into(),
                "0".into(),
                "0".into(),
                "-".into(),
            ]);
        }
        for lane in &queue.lanes {
            rows.push([
                broker[0].clone(),
                broker[1].clone(),
                broker[2].clone(),
                broker[3].clone(),
                display::priority(lane.priority),
                lane.waiting.to_string(),
                duration_text(lane.oldest_wait.as_ref()),
                lane.retrying.to_string(),
                lane.consumed_recently.to_string(),
                duration_text(lane.mean_wait.as_ref()),
            ]);
        }
    }
    let window = duration(stats.recent_window.as_ref()).map_or_else(
        || "recent".into(),
        |window| humantime::format_duration(window).to_string(),
    );
    let consumed = format!("CONSUMED_{window}");
    let mut text = display::table(
        "",
        [
            "QUEUE",
            "READY",
            "CONSUMERS",
            "DEAD_LETTERED",
            "PRIORITY",
            "WAITING",
            "OLDEST_WAIT",
            "RETRYING",
            consumed.as_str(),
            "MEAN_WAIT",
        ],
        &rows,
    );
    let outbox = stats.outbox.unwrap_or_default();
    text.push_str(&format!(
        "\nOutbox backlog: {} (oldest due {} ago)\n",
        outbox.backlog,
        duration_text(outbox.oldest_due.as_ref())
    ));
    text
}

fn to_json(stats: &GetQueueStatsResponse) -> serde_json::Value {
    let seconds = |value: Option<&prost_types::Duration>| {
        duration(value).map_or(serde_json::Value::Null, |value| value.as_secs_f64().into())
    };
    serde_json::json!({
        "queues": stats.queues.iter().map(|queue| serde_json::json!({
            "channel": display::channel(queue.channel),
            "queue": queue.queue,
            "ready_messages": queue.ready_messages,
            "consumers": queue.consumers,
            "dead_lettered": queue.dead_lettered,
            "lanes": queue.lanes.iter().map(|lane| serde_json::json!({
                "priority": display::priority(lane.priority),
                "waiting": lane.waiting,
                "oldest_wait_seconds": seconds(lane.oldest_wait.as_ref()),
                "retrying": lane.retrying,
                "consumed_recently": lane.consumed_recently,
                "mean_wait_seconds": seconds(lane.mean_wait.as_ref()),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "outbox": {
            "backlog": stats.outbox.unwrap_or_default().backlog,
            "oldest_due_seconds": seconds(stats.outbox.and_then(|outbox| outbox.oldest_due).as_ref()),
        },
        "recent_window_seconds": seconds(stats.recent_window.as_ref()),
        "broker_error": stats.broker_error,
        "measured_at": display::timestamp_json(stats.measured_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use herald_proto::admin::{OutboxStats, PriorityLane, QueueStats};
    use herald_proto::common::{Channel, Priority};

    use super::*;

    fn seconds(value: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: value,
            nanos: 0,
        })
    }

    fn stats() -> GetQueueStatsResponse {
        GetQueueStatsResponse {
            queues: vec![
                QueueStats {
                    channel: Channel::Email.into(),
                    queue: "herald.email.deliver".into(),
                    ready_messages: Some(3),
                    consumers: Some(1),
                    dead_lettered: Some(0),
                    lanes: vec![
                        PriorityLane {
                            priority: Priority::High.into(),
                            waiting: 1,
                            oldest_wait: seconds(2),
                            retrying: 0,
                            consumed_recently: 7,
                            mean_wait: seconds(1),
                        },
                        PriorityLane {
                            priority: Priority::Normal.into(),
                            waiting: 2,
                            oldest_wait: seconds(5),
                            retrying: 1,
                            consumed_recently: 10,
                            mean_wait: None,
                        },
                    ],
                },
                QueueStats {
                    channel: Channel::Sms.into(),
                    queue: "herald.sms.deliver".into(),
                    ..QueueStats::default()
                },
            ],
            outbox: Some(OutboxStats {
                backlog: 4,
                oldest_due: seconds(3),
            }),
            recent_window: seconds(300),
            broker_error: String::new(),
            measured_at: None,
        }
    }

    #[test]
    fn the_table_has_a_row_per_lane_and_one_for_an_idle_queue() {
        let text = to_text(&stats());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("QUEUE"));
        assert!(lines[0].contains("CONSUMED_5m"));
        let high: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            high,
            [
                "herald.email.deliver",
                "3",
                "1",
                "0",
                "HIGH",
                "1",
                "2.000s",
                "0",
                "7",
                "1.000s"
            ]
        );
        let normal: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(normal[4..], ["NORMAL", "2", "5.000s", "1", "10", "-"]);
        let idle: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            idle,
            [
                "herald.sms.deliver",
                "-",
                "-",
                "-",
                "-",
                "0",
                "-",
                "0",
                "0",
                "-"
            ]
        );
        assert!(text.contains("Outbox backlog: 4 (oldest due 3.000s ago)"));
    }

    #[test]
    fn json_keeps_missing_broker_counts_null() {
        let json = to_json(&stats());
        assert_eq!(
            json["queues"][0]["lanes"][1]["mean_wait_seconds"],
            serde_json::Value::Null
        );
        assert_eq!(json["queues"][1]["ready_messages"], serde_json::Value::Null);
        assert_eq!(json["queues"][0]["lanes"][0]["oldest_wait_seconds"], 2.0);
        assert_eq!(json["outbox"]["backlog"], 4);
    }
}
