//! Subject validation and wildcard matching: never panic, and the rules
//! agree with each other (a valid subject is a valid pattern, matches
//! itself and `>`).
#![no_main]

use jetway::subject::{matches, overlaps, validate, validate_pattern, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (a, b) = input;
    for s in [a, b] {
        let as_subject = validate(s);
        let as_pattern = validate_pattern(s);
        if as_subject.is_ok() {
            assert!(as_pattern.is_ok(), "{s:?} is a subject but not a pattern");
            assert!(s.len() <= MAX_LEN);
            assert!(!s.contains(['*', '>']));
            assert!(s.bytes().all(|c| c.is_ascii_graphic()));
            assert!(matches(">", s), "> must match {s:?}");
            assert!(matches(s, s), "{s:?} must match itself");
            assert!(overlaps(s, s));
        }
    }
    let m = matches(a, b);
    if m && validate_pattern(a).is_ok() && validate(b).is_ok() {
        assert!(
            overlaps(a, b),
            "{a:?} matches {b:?} but does not overlap it"
        );
    }
    let _ = overlaps(b, a);
});
