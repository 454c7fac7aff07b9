//! What an SMTP reply means for a delivery. lettre parses the reply (RFC 5321 §4.2); Herald
//! decides from its code alone, since reply texts often echo the recipient's address.

use lettre::transport::smtp::response::{Code, Response, Severity};

/// What a reply code means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2yz or 3yz: the server took the command.
    Accepted,
    /// 550 (mailbox unavailable), 551 (user not local), 553 (mailbox name not allowed): the
    /// address cannot take mail, for good.
    HardBounce,
    /// Any other 5yz: refused for good.
    Rejected,
    /// 4yz: try again later.
    Deferred,
}

/// The class of a reply `code`.
pub fn classify(code: Code) -> ReplyClass {
    match code.severity {
        Severity::PositiveCompletion | Severity::PositiveIntermediate => ReplyClass::Accepted,
        Severity::TransientNegativeCompletion => ReplyClass::Deferred,
        Severity::PermanentNegativeCompletion
            if matches!(code.to_string().as_str(), "550" | "551" | "553") =>
        {
            ReplyClass::HardBounce
        }
        Severity::PermanentNegativeCompletion => ReplyClass::Rejected,
    }
}

/// A whole reply as a server sends it (`250-…\r\n250 OK\r\n`), parsed by lettre and
/// classified: `None` when it does not parse (the worker then treats the connection as
/// failed, which is retryable). The fuzz target `smtp_reply` drives this function.
pub fn classify_reply(reply: &str) -> Option<(Code, ReplyClass)> {
    let response: Response = reply.parse().ok()?;
    let code = response.code();
    Some((code, classify(code)))
}

/// The entry of the fuzz target `smtp_reply` (and of the test replaying its corpus): `data`
/// as the text of a reply, classified.
///
/// # Panics
/// When a parsed reply is classified against its code (what the fuzzer looks for).
pub fn check_fuzz_input(data: &[u8]) {
    let reply = String::from_utf8_lossy(data);
    if let Some((code, class)) = classify_reply(&reply) {
        let expected = match code.severity {
            Severity::PositiveCompletion | Severity::PositiveIntermediate => {
                [ReplyClass::Accepted, ReplyClass::Accepted]
            }
            Severity::TransientNegativeCompletion => [ReplyClass::Deferred, ReplyClass::Deferred],
            Severity::PermanentNegativeCompletion => [ReplyClass::HardBounce, ReplyClass::Rejected],
        };
        assert!(expected.contains(&class), "{code} classified as {class:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reply: &str, expected: Option<(&str, ReplyClass)>) {
        let classified = classify_reply(reply).map(|(code, class)| (code.to_string(), class));
        assert_eq!(
            classified,
            expected.map(|(code, class)| (code.to_owned(), class)),
            "{reply:?}"
        );
    }

    #[test]
    fn replies_are_classified_by_their_code() {
        check(
            "250 2.0.0 Ok: queued\r\n",
            Some(("250", ReplyClass::Accepted)),
        );
        check("354 go ahead\r\n", Some(("354", ReplyClass::Accepted)));
        check(
            "250-smtp.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
            Some(("250", ReplyClass::Accepted)),
        );
        check(
            "421 4.7.0 try later\r\n",
            Some(("421", ReplyClass::Deferred)),
        );
        check(
            "550 5.1.1 <ada@example.com>: unknown\r\n",
            Some(("550", ReplyClass::HardBounce)),
        );
        check("553 bad mailbox\r\n", Some(("553", ReplyClass::HardBounce)));
        check("554 5.7.1 spam\r\n", Some(("554", ReplyClass::Rejected)));
        check("hello\r\n", None);
        check("", None);
        check("999 nine\r\n", None);
    }
}
