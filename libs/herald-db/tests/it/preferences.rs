//! The preference repository: typed values in, the same values out, and a row that no longer
//! parses is that user's error only.

use std::collections::BTreeMap;

use diesel_async::RunQueryDsl;
use herald_db::preferences::{self, PreferenceRecord};
use herald_domain::{Channel, DeviceToken, Platform, QuietHours, TimeZone};
use herald_test_support::TestDatabase;

use crate::connect;

#[tokio::test]
async fn stored_preferences_come_back_typed_and_a_corrupt_row_fails_only_its_user() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let quiet = QuietHours::new(
        herald_domain::parse_time_of_day("22:00").unwrap(),
        herald_domain::parse_time_of_day("07:00").unwrap(),
        [chrono::Weekday::Sat, chrono::Weekday::Sun]
            .into_iter()
            .collect(),
    )
    .unwrap();
    for user_id in ["ada", "bob"] {
        preferences::update(&mut connection, user_id, "test", &[], |record| {
            record.phone = Some("+821012345678".into());
            record.device_tokens = vec![DeviceToken {
                token: format!("{user_id}-token"),
                platform: Platform::Android,
            }];
            record.preferences.channels = BTreeMap::from([(Channel::Sms, false)]);
            record.preferences.categories =
                BTreeMap::from([("news".to_owned(), BTreeMap::from([(Channel::Email, false)]))]);
            record.preferences.quiet_hours = Some(quiet);
            record.preferences.time_zone = Some(TimeZone::parse("Asia/Seoul").unwrap());
            Ok(())
        })
        .await
        .unwrap();
    }
    let stored: PreferenceRecord = preferences::get(&mut connection, "ada")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.device_tokens[0].token, "ada-token");
    assert_eq!(
        stored.preferences.channels,
        BTreeMap::from([(Channel::Sms, false)])
    );
    assert!(!stored.preferences.categories["news"][&Channel::Email]);
    assert_eq!(stored.preferences.quiet_hours, Some(quiet));

    // A bad manual edit of one user's row.
    diesel::sql_query(
        "UPDATE user_preferences SET channels = '{\"fax\": true}'::jsonb WHERE user_id = 'bob'",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let both = preferences::get_many(&mut connection, &["ada".into(), "bob".into()])
        .await
        .unwrap();
    assert_eq!(both["ada"].as_ref().unwrap(), &stored);
    assert_eq!(
        both["bob"].as_ref().unwrap_err().to_string(),
        "user_preferences.channels does not parse"
    );
    let error = preferences::get(&mut connection, "bob").await.unwrap_err();
    assert!(matches!(error, herald_db::Error::Corrupt(_)), "{error:?}");
}
