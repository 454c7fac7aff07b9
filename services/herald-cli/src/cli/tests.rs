//! The command line's definition and how it parses.

use clap::CommandFactory;

use super::*;

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn the_tls_key_and_the_template_key_are_told_apart_by_position() {
    let cli = Cli::try_parse_from([
        "herald-cli",
        "--cert",
        "admin.pem",
        "--key",
        "admin.key",
        "template",
        "create",
        "--key",
        "welcome",
        "--category",
        "onboarding",
        "--subject",
        "Welcome {{username}}",
    ]);
    let Ok(Cli {
        connection,
        command: Command::Template(TemplateCommand::Create(create)),
    }) = cli
    else {
        panic!("expected a template create command, got {cli:?}");
    };
    assert_eq!(connection.key, PathBuf::from("admin.key"));
    assert_eq!(connection.cert, PathBuf::from("admin.pem"));
    assert_eq!(create.key, "welcome");
}

#[test]
fn key_value_splits_on_the_first_equals_sign() {
    assert_eq!(
        parse_key_value("a=b=c"),
        Ok(("a".to_owned(), "b=c".to_owned()))
    );
    assert_eq!(parse_key_value("a="), Ok(("a".to_owned(), String::new())));
    assert!(parse_key_value("=b").is_err());
    assert!(parse_key_value("ab").is_err());
}

#[test]
fn params_json_must_be_an_object() {
    assert!(parse_json_object(r#"{"n": 1}"#).is_ok());
    assert!(parse_json_object("[1]").is_err());
    assert!(parse_json_object("{").is_err());
}

#[test]
fn submit_parses_repeated_recipients_and_parameters() {
    let cli = Cli::try_parse_from([
        "herald-cli",
        "submit",
        "--template",
        "welcome",
        "--to",
        "ada@example.com",
        "--to",
        "bob@example.com",
        "--param",
        "username=Ada",
        "--priority",
        "high",
    ]);
    let Ok(Cli {
        command: Command::Submit(submit),
        ..
    }) = cli
    else {
        panic!("expected a submit command, got {cli:?}");
    };
    assert_eq!(submit.to, ["ada@example.com", "bob@example.com"]);
    assert_eq!(submit.params, [("username".to_owned(), "Ada".to_owned())]);
    assert_eq!(submit.priority, PriorityArg::High);
    assert_eq!(submit.channels, [ChannelArg::Email]);
}
