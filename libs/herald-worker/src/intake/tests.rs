//! Unit tests of the intake order.

use herald_domain::Priority;

use super::Intake;

fn drain(intake: &Intake<&'static str>) -> Vec<&'static str> {
    std::iter::from_fn(|| intake.pop()).collect()
}

#[test]
fn the_highest_priority_goes_first_and_equal_priorities_keep_their_order() {
    let intake = Intake::default();
    for (priority, name) in [
        (Priority::Low, "low 1"),
        (Priority::Normal, "normal 1"),
        (Priority::Low, "low 2"),
        (Priority::Critical, "critical"),
        (Priority::Normal, "normal 2"),
        (Priority::High, "high"),
    ] {
        intake.push(priority, name);
    }

    assert_eq!(
        drain(&intake),
        ["critical", "high", "normal 1", "normal 2", "low 1", "low 2"]
    );
}

#[test]
fn a_late_critical_item_overtakes_a_backlog() {
    let intake = Intake::default();
    for _ in 0..300 {
        intake.push(Priority::Low, "bulk");
    }
    assert_eq!(intake.pop(), Some("bulk"));
    intake.push(Priority::Critical, "critical");

    assert_eq!(intake.pop(), Some("critical"));
    assert_eq!(intake.len(), 299);
}

#[test]
fn retained_items_keep_their_order() {
    let intake = Intake::default();
    for (priority, name) in [
        (Priority::Normal, "keep 1"),
        (Priority::Normal, "drop"),
        (Priority::High, "keep 2"),
    ] {
        intake.push(priority, name);
    }

    intake.retain(|name| name.starts_with("keep"));

    assert_eq!(drain(&intake), ["keep 2", "keep 1"]);
}

#[tokio::test]
async fn waiting_returns_once_an_item_arrives() {
    let intake = std::sync::Arc::new(Intake::default());
    let waiter = tokio::spawn({
        let intake = std::sync::Arc::clone(&intake);
        async move {
            intake.wait().await;
            intake.pop()
        }
    });
    tokio::task::yield_now().await;
    intake.push(Priority::Normal, "one");

    assert_eq!(waiter.await.unwrap(), Some("one"));
}
