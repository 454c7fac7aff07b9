//! Personal data at rest: what a dump of the database shows after a notification went out.

use std::time::Duration;

use herald_proto::submit::NotificationStatus;

use crate::harness::{TestApp, parameters, welcome_request};

#[tokio::test(flavor = "multi_thread")]
async fn a_database_dump_after_a_delivery_holds_no_address_parameter_or_rendered_text_in_clear() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    {
        let mut connection = herald_db::connection(&app.pool).await.unwrap();
        herald_db::preferences::update(&mut connection, "user-1", "test", &[], |record| {
            record.phone = Some("+15557654321".into());
            Ok(())
        })
        .await
        .unwrap();
    }
    let mut request = welcome_request("someone@example.com");
    request.parameters = Some(parameters(&[
        ("username", "Quokkabelle"),
        ("item_name", "order zeta-kumquat"),
    ]));
    request.metadata = [("crm_contact".to_owned(), "vip-marmoset".to_owned())].into();
    let accepted = app.submit(request).await.unwrap();
    let email = app
        .smtp
        .wait_for_messages(1, Duration::from_secs(20))
        .await
        .remove(0);
    assert!(email.text.unwrap().contains("Hello Quokkabelle"));
    app.wait_for_status(&accepted.notification_id, NotificationStatus::Delivered)
        .await;

    let dump = app.pg_dump().await;
    assert!(
        dump.contains(&accepted.notification_id) && dump.contains("user-1"),
        "the dump holds the notification (ids stay in clear)"
    );
    for personal in [
        "someone@example.com",
        "Quokkabelle",
        "zeta-kumquat",
        "vip-marmoset",
        "+15557654321",
        "5557654321",
    ] {
        assert!(
            !dump.contains(personal),
            "`{personal}` is in the dump in clear"
        );
    }
}
