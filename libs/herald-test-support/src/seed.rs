//! Rows for tests that write below the API (repositories, the submit writer): a template and
//! a notification to adjust with struct update syntax.

use std::time::Duration;

use herald_db::notifications::{Disposition, NewDelivery, NewNotification};
use herald_db::templates::NewTemplate;
use herald_domain::{
    Category, Channel, DeliveryId, NotificationId, Priority, TemplateId, TemplateKey,
};
use herald_templates::VersionContent;

/// The `welcome` template (category `onboarding`) with a plain email part and no parameters.
#[must_use]
pub fn welcome_template() -> NewTemplate {
    NewTemplate {
        id: TemplateId::generate(),
        key: TemplateKey::parse("welcome").expect("a template key"),
        category: Category::parse("onboarding").expect("a category"),
        description: String::new(),
        content: VersionContent::from_stored(
            serde_json::json!({"email": {"subject": "s", "html": "", "text": "t"}}),
        )
        .expect("a template version"),
        parameters: vec![],
        sample_parameters: None,
        created_by: "test".into(),
    }
}

/// A notification of `template_id` at `version` (category `onboarding`, normal priority, no
/// idempotency key) with one email delivery to ada@example.com, due now.
#[must_use]
pub fn email_notification(template_id: TemplateId, version: i32) -> NewNotification {
    NewNotification {
        id: NotificationId::generate(),
        submitted_by: "test".into(),
        idempotency_key: None,
        idempotency_retention: Duration::from_secs(3600),
        request_hash: vec![1],
        template_id,
        template_version: version,
        category: "onboarding".into(),
        priority: Priority::Normal,
        parameters: serde_json::json!({}).into(),
        metadata: serde_json::json!({}).into(),
        trace_context: std::collections::HashMap::new(),
        accepted_at: chrono::Utc::now(),
        deliveries: vec![NewDelivery {
            id: DeliveryId::generate(),
            channel: Channel::Email,
            recipient_index: 0,
            user_id: None,
            address: Some("ada@example.com".into()),
            locale: None,
            variant: None,
            disposition: Disposition::Now,
        }],
    }
}
