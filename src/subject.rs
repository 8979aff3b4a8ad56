//! NATS subjects: validation of what publishers send and matching against
//! the wildcard patterns of `publish.allow`, streams and subscriptions.

/// Longest subject jetway accepts, in bytes.
pub const MAX_LEN: usize = 255;

/// Why a subject or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("subject has an empty token (two dots in a row, or a leading or trailing dot)")]
    EmptyToken,
    #[error("subject may only hold printable ASCII without spaces")]
    BadCharacter,
    #[error("subject may not contain the wildcards * or >")]
    Wildcard,
    #[error("`>` may only be the last token")]
    MisplacedTail,
    #[error("a wildcard must be a whole token")]
    PartialWildcard,
}

fn check_tokens(subject: &str, wildcards: bool) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > MAX_LEN {
        return Err(SubjectError::TooLong);
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SubjectError::BadCharacter);
        }
        let has_wildcard = token.contains(['*', '>']);
        if !has_wildcard {
            continue;
        }
        if !wildcards {
            return Err(SubjectError::Wildcard);
        }
        match token {
            "*" => {}
            ">" if tokens.peek().is_none() => {}
            ">" => return Err(SubjectError::MisplacedTail),
            _ => return Err(SubjectError::PartialWildcard),
        }
    }
    Ok(())
}

/// A subject a message is published to: no wildcards.
pub fn validate(subject: &str) -> Result<(), SubjectError> {
    check_tokens(subject, false)
}

/// A filter or allow pattern: `*` and a trailing `>` allowed as whole tokens.
pub fn validate_pattern(pattern: &str) -> Result<(), SubjectError> {
    check_tokens(pattern, true)
}

/// Subjects no app may publish to, whatever `publish.allow` says (SPEC 3):
/// a first token starting with `$` (the JetStream API, KV buckets, object
/// stores, system subjects), reply inboxes and jetway's own dead letters.
/// Any of them would let an app reach past its own events: delete another
/// team's stream through `$JS.API.STREAM.DELETE.*`, forge dead letters that
/// are replayed with another app's callback token, answer another client's
/// request.
pub fn is_reserved(subject: &str) -> bool {
    let first = subject.split('.').next().unwrap_or_default();
    first.starts_with('$') || first == "_INBOX" || (first == "jetway" && subject.len() > 6)
}

/// Whether a concrete `subject` falls under `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether two patterns can match a common subject (used to find the stream
/// of a subscription's filter).
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_validate() {
        let table: &[(&str, Result<(), SubjectError>)] = &[
            ("orders.created", Ok(())),
            ("a", Ok(())),
            ("orders.42.item-1_x", Ok(())),
            ("", Err(SubjectError::Empty)),
            ("orders..created", Err(SubjectError::EmptyToken)),
            (".orders", Err(SubjectError::EmptyToken)),
            ("orders.", Err(SubjectError::EmptyToken)),
            ("orders created", Err(SubjectError::BadCharacter)),
            ("orders.\tx", Err(SubjectError::BadCharacter)),
            ("orders.é", Err(SubjectError::BadCharacter)),
            ("orders.\u{7f}", Err(SubjectError::BadCharacter)),
            ("orders.*", Err(SubjectError::Wildcard)),
            ("orders.>", Err(SubjectError::Wildcard)),
            ("orders.a*", Err(SubjectError::Wildcard)),
        ];
        for (input, want) in table {
            assert_eq!(&validate(input), want, "{input:?}");
        }
        assert_eq!(validate(&"a".repeat(255)), Ok(()));
        assert_eq!(validate(&"a".repeat(256)), Err(SubjectError::TooLong));
    }

    #[test]
    fn reserved_subjects() {
        let table = [
            ("$JS.API.STREAM.DELETE.ORDERS", true),
            ("$KV.JETWAY_SCHEMAS.order.created", true),
            ("$O.bucket.x", true),
            ("$SYS.REQ.SERVER.PING", true),
            ("$G", true),
            ("$anything.else", true),
            ("_INBOX.abc.def", true),
            ("_INBOX", true),
            ("jetway.dlq.victim.hook", true),
            ("jetway.anything", true),
            ("jetway", false),
            ("jetways.dlq", false),
            ("orders.$JS", false),
            ("orders._INBOX", false),
            ("_INBOXES.x", false),
            ("orders.created", false),
        ];
        for (subject, want) in table {
            assert_eq!(is_reserved(subject), want, "{subject}");
        }
    }

    #[test]
    fn patterns_validate() {
        let table: &[(&str, Result<(), SubjectError>)] = &[
            ("orders.>", Ok(())),
            ("orders.*.created", Ok(())),
            ("*", Ok(())),
            (">", Ok(())),
            ("orders.>.x", Err(SubjectError::MisplacedTail)),
            ("orders.a*", Err(SubjectError::PartialWildcard)),
            ("orders.>x", Err(SubjectError::PartialWildcard)),
            ("orders..>", Err(SubjectError::EmptyToken)),
        ];
        for (input, want) in table {
            assert_eq!(&validate_pattern(input), want, "{input:?}");
        }
    }

    #[test]
    fn patterns_match_subjects() {
        let table = [
            ("orders.>", "orders.created", true),
            ("orders.>", "orders.a.b.c", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.a.b", false),
            ("*.created", "orders.created", true),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.created.x", false),
            ("orders.created.x", "orders.created", false),
            (">", "anything.at.all", true),
        ];
        for (pattern, subject, want) in table {
            assert_eq!(matches(pattern, subject), want, "{pattern} ~ {subject}");
        }
    }

    #[test]
    fn patterns_overlap() {
        let table = [
            ("orders.>", "orders.created", true),
            ("orders.created", "orders.>", true),
            ("orders.*", "orders.created", true),
            ("orders.*", "*.created", true),
            ("orders.*", "payments.*", false),
            ("orders.created", "orders.deleted", false),
            ("orders.*", "orders.a.b", false),
        ];
        for (a, b, want) in table {
            assert_eq!(overlaps(a, b), want, "{a} ~ {b}");
        }
    }
}
