//! `herald_db::inbox`: idempotent storage, keyset paging, read and archive state with their
//! tracking events.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_db::inbox::{self, Changed, InboxQuery, NewInboxItem};
use herald_db::schema;
use herald_domain::{DeliveryId, NotificationId};
use uuid::Uuid;

use crate::Storage;

fn item<'a>(user_id: &'a str, delivery_id: DeliveryId, title: &'a str) -> NewInboxItem<'a> {
    NewInboxItem {
        user_id,
        delivery_id,
        notification_id: NotificationId::generate(),
        category: "orders",
        title,
        body: "body",
        action_url: "",
    }
}

/// Stores one item per delivery of a new notification to `user_id`, oldest first.
async fn store(storage: &Storage, user_id: &str, count: usize) -> Vec<Uuid> {
    let mut connection = storage.connect().await;
    let mut ids = Vec::new();
    for (index, delivery_id) in storage
        .deliveries_being_sent(user_id, count)
        .await
        .into_iter()
        .enumerate()
    {
        let title = format!("item {index}");
        let stored = inbox::insert(&mut connection, &item(user_id, delivery_id, &title))
            .await
            .expect("inserting")
            .expect("a new item");
        ids.push(stored.id);
    }
    ids
}

/// `(kind, attempt)` of the tracking events of `item_id`'s delivery.
async fn tracking_events(connection: &mut AsyncPgConnection, item_id: Uuid) -> Vec<(String, i32)> {
    schema::delivery_events::table
        .inner_join(
            schema::inbox_items::table
                .on(schema::inbox_items::delivery_id.eq(schema::delivery_events::delivery_id)),
        )
        .filter(schema::inbox_items::id.eq(item_id))
        .filter(schema::delivery_events::kind.eq_any(["read", "dismissed"]))
        .order(schema::delivery_events::id.asc())
        .select((
            schema::delivery_events::kind,
            schema::delivery_events::attempt,
        ))
        .load(connection)
        .await
        .expect("reading events")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_inbox_column_in_schema_rs_exists_after_migrating() {
    let storage = Storage::new().await;
    let mut connection = storage.connect().await;
    schema::inbox_items::table
        .select(schema::inbox_items::all_columns)
        .limit(0)
        .execute(&mut connection)
        .await
        .expect("every declared column exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_stores_at_most_one_item() {
    let storage = Storage::new().await;
    let mut connection = storage.connect().await;
    let delivery_id = storage.deliveries_being_sent("user-1", 1).await[0];
    let first = inbox::insert(&mut connection, &item("user-1", delivery_id, "first"))
        .await
        .unwrap();
    let second = inbox::insert(&mut connection, &item("user-1", delivery_id, "second"))
        .await
        .unwrap();
    assert!(first.is_some());
    assert_eq!(second, None);
    let items = inbox::list(
        &mut connection,
        "user-1",
        &InboxQuery {
            limit: 10,
            ..InboxQuery::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].title.expose(), "first");
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_is_stored_only_while_its_delivery_is_being_sent_to_its_user() {
    let storage = Storage::new().await;
    let mut connection = storage.connect().await;
    let not_claimed = storage.in_app_deliveries(Some("user-1"), 1).await[0];
    let erased = storage.deliveries_being_sent("user-1", 1).await[0];
    let erasure =
        herald_db::erasure::erase_user(&mut connection, "user-1", "test", chrono::Utc::now())
            .await
            .unwrap();
    // The one a worker holds right now keeps its state (its outcome is recorded as it
    // happens); it no longer names the user, so its item is not stored either.
    assert_eq!((erasure.deliveries, erasure.cancelled), (2, 1));
    for delivery_id in [not_claimed, erased] {
        let stored = inbox::insert(&mut connection, &item("user-1", delivery_id, "late"))
            .await
            .unwrap();
        assert_eq!(stored, None, "nothing is stored for {delivery_id}");
    }
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_newest_first_and_filter_unread_and_archived_items() {
    let storage = Storage::new().await;
    let ids = store(&storage, "user-1", 5).await;
    store(&storage, "user-2", 2).await;
    let mut connection = storage.connect().await;

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = inbox::list(
            &mut connection,
            "user-1",
            &InboxQuery {
                limit: 2,
                before,
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|last| (last.created_at, last.id));
        seen.extend(page.into_iter().map(|item| item.id));
    }
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);

    assert_eq!(
        inbox::mark_read(&mut connection, "user-1", &ids[..2])
            .await
            .unwrap(),
        Changed::Items(ids[..2].to_vec())
    );
    assert_eq!(
        inbox::archive(&mut connection, "user-1", &ids[4..])
            .await
            .unwrap(),
        Changed::Items(ids[4..].to_vec())
    );
    let list = async |connection: &mut AsyncPgConnection, unread_only, include_archived| {
        inbox::list(
            connection,
            "user-1",
            &InboxQuery {
                unread_only,
                include_archived,
                limit: 100,
                before: None,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        list(&mut connection, true, false).await,
        vec![ids[3], ids[2]]
    );
    assert_eq!(
        list(&mut connection, false, false).await,
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    assert_eq!(
        list(&mut connection, true, true).await,
        vec![ids[4], ids[3], ids[2]]
    );
    assert_eq!(list(&mut connection, false, true).await, newest_first);
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-2")
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn marking_read_twice_changes_and_records_once() {
    let storage = Storage::new().await;
    let ids = store(&storage, "user-1", 2).await;
    let mut connection = storage.connect().await;
    assert_eq!(
        inbox::mark_read(&mut connection, "user-1", &ids[..1])
            .await
            .unwrap(),
        Changed::Items(vec![ids[0]])
    );
    assert_eq!(
        inbox::mark_read(&mut connection, "user-1", &ids[..1])
            .await
            .unwrap(),
        Changed::Items(vec![])
    );
    assert_eq!(
        tracking_events(&mut connection, ids[0]).await,
        // The event carries the attempt that stored the item.
        vec![("read".to_owned(), 1)]
    );
    assert!(tracking_events(&mut connection, ids[1]).await.is_empty());
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_mark_read_calls_record_one_event() {
    let storage = Storage::new().await;
    let ids = store(&storage, "user-1", 1).await;
    let mut first = storage.connect().await;
    let mut second = storage.connect().await;
    let (a, b) = tokio::join!(
        inbox::mark_read(&mut first, "user-1", &ids),
        inbox::mark_read(&mut second, "user-1", &ids),
    );
    let changed: usize = [a.unwrap(), b.unwrap()]
        .into_iter()
        .map(|changed| match changed {
            Changed::Items(items) => items.len(),
            Changed::NotFound(id) => panic!("{id} is the user's"),
        })
        .sum();
    assert_eq!(changed, 1);
    assert_eq!(tracking_events(&mut first, ids[0]).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_item_is_not_found_and_nothing_changes() {
    let storage = Storage::new().await;
    let mine = store(&storage, "user-1", 1).await;
    let theirs = store(&storage, "user-2", 1).await;
    let mut connection = storage.connect().await;
    let both = [mine[0], theirs[0]];
    assert_eq!(
        inbox::mark_read(&mut connection, "user-1", &both)
            .await
            .unwrap(),
        Changed::NotFound(theirs[0])
    );
    assert_eq!(
        inbox::archive(&mut connection, "user-1", &both)
            .await
            .unwrap(),
        Changed::NotFound(theirs[0])
    );
    let unknown = Uuid::now_v7();
    assert_eq!(
        inbox::mark_read(&mut connection, "user-1", &[unknown])
            .await
            .unwrap(),
        Changed::NotFound(unknown)
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-2")
            .await
            .unwrap(),
        1
    );
    assert!(tracking_events(&mut connection, mine[0]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn mark_all_read_marks_the_unread_items_and_leaves_archived_ones() {
    let storage = Storage::new().await;
    let ids = store(&storage, "user-1", 4).await;
    store(&storage, "user-2", 1).await;
    let mut connection = storage.connect().await;
    inbox::mark_read(&mut connection, "user-1", &ids[..1])
        .await
        .unwrap();
    inbox::archive(&mut connection, "user-1", &ids[1..2])
        .await
        .unwrap();
    let mut marked = inbox::mark_all_read(&mut connection, "user-1")
        .await
        .unwrap();
    marked.sort();
    assert_eq!(marked, ids[2..].to_vec());
    assert!(
        inbox::mark_all_read(&mut connection, "user-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-2")
            .await
            .unwrap(),
        1
    );
    let archived = inbox::find(&mut connection, "user-1", &ids[1..2])
        .await
        .unwrap();
    assert_eq!(archived[0].read_at, None);
    assert_eq!(
        tracking_events(&mut connection, ids[1]).await,
        vec![("dismissed".to_owned(), 1)]
    );
    assert_eq!(
        tracking_events(&mut connection, ids[3]).await,
        vec![("read".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn archiving_twice_changes_and_records_once_and_lowers_the_unread_count() {
    let storage = Storage::new().await;
    let ids = store(&storage, "user-1", 2).await;
    let mut connection = storage.connect().await;
    assert_eq!(
        inbox::archive(&mut connection, "user-1", &ids)
            .await
            .unwrap(),
        Changed::Items(ids.clone())
    );
    assert_eq!(
        inbox::archive(&mut connection, "user-1", &ids)
            .await
            .unwrap(),
        Changed::Items(vec![])
    );
    assert_eq!(
        inbox::unread_count(&mut connection, "user-1")
            .await
            .unwrap(),
        0
    );
    for id in &ids {
        assert_eq!(
            tracking_events(&mut connection, *id).await,
            vec![("dismissed".to_owned(), 1)]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn find_returns_only_the_users_items() {
    let storage = Storage::new().await;
    let mine = store(&storage, "user-1", 2).await;
    let theirs = store(&storage, "user-2", 1).await;
    let mut connection = storage.connect().await;
    let found: Vec<Uuid> = inbox::find(&mut connection, "user-1", &[mine[1], theirs[0], mine[0]])
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.id)
        .collect();
    assert_eq!(found, mine);
}
