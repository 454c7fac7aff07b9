//! TemplateService: admins write, submitters read.

use herald_proto::template::{
    CreateTemplateRequest, EmailPart, GetTemplateRequest, ListTemplatesRequest, TemplateContent,
};
use tonic::Code;

use crate::harness::{As, TestApp};

fn request(key: &str, html: &str) -> CreateTemplateRequest {
    CreateTemplateRequest {
        key: key.into(),
        category: "onboarding".into(),
        description: "Sent after sign-up".into(),
        content: Some(TemplateContent {
            email: Some(EmailPart {
                subject: "Hi {{username}}".into(),
                html: html.into(),
                text: String::new(),
            }),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_creates_a_template_that_submitters_can_read() {
    let app = TestApp::spawn().await;
    let created = app
        .template_client(As::Admin)
        .await
        .create_template(request(
            "welcome",
            "<p>{{#each items}}{{name}}{{/each}} {{total}}</p>",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.version, 1);
    assert_eq!(created.parameters, ["items", "total", "username"]);
    assert_eq!(created.created_by, "spiffe://herald.local/admin/ops");

    let fetched = app
        .template_client(As::Orders)
        .await
        .get_template(GetTemplateRequest {
            key: "welcome".into(),
            version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, created);
}

#[tokio::test(flavor = "multi_thread")]
async fn template_writes_need_the_admin_role() {
    let app = TestApp::spawn().await;
    let status = app
        .template_client(As::Orders)
        .await
        .create_template(request("welcome", "<p>x</p>"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(app.count_rows("templates").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_templates_are_refused_with_the_part_named_and_nothing_saved() {
    let app = TestApp::spawn().await;
    let mut client = app.template_client(As::Admin).await;
    let cases = [
        (request("Bad Key", "x"), "key:"),
        (
            CreateTemplateRequest {
                category: String::new(),
                ..request("ok", "x")
            },
            "category:",
        ),
        (
            request("ok", "{{#if}}"),
            "content.email.html does not compile",
        ),
        (
            CreateTemplateRequest {
                content: None,
                ..request("ok", "x")
            },
            "content.content must have",
        ),
        (
            CreateTemplateRequest {
                description: "d".repeat(1001),
                ..request("ok", "x")
            },
            "description:",
        ),
    ];
    for (request, expected) in cases {
        let status = client.create_template(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with(expected),
            "expected `{expected}…`, got `{}`",
            status.message()
        );
    }
    assert_eq!(app.count_rows("templates").await, 0);
    assert_eq!(app.count_rows("template_versions").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_key_is_already_exists() {
    let app = TestApp::spawn().await;
    let mut client = app.template_client(As::Admin).await;
    client
        .create_template(request("welcome", "x"))
        .await
        .unwrap();
    let status = client
        .create_template(request("welcome", "y"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(app.count_rows("templates").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_are_listed_by_key_in_pages() {
    let app = TestApp::spawn().await;
    let mut admin = app.template_client(As::Admin).await;
    for key in ["c", "a", "b"] {
        admin.create_template(request(key, "x")).await.unwrap();
    }
    let mut client = app.template_client(As::Orders).await;
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_templates(ListTemplatesRequest {
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(page.templates.into_iter().map(|template| template.key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(keys, ["a", "b", "c"]);

    let status = client
        .list_templates(ListTemplatesRequest {
            page_size: 101,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_template_is_not_found() {
    let app = TestApp::spawn().await;
    let status = app
        .template_client(As::Orders)
        .await
        .get_template(GetTemplateRequest {
            key: "nope".into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
