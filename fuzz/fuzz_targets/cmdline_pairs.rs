//! The cmdline's pair parser and `get` against arbitrary text. What must
//! hold: every pair has a non-empty key without `=`, neither key nor value
//! holds white space, `get` returns the last value of a key, and
//! `unique_pairs` has each key once, with that same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vport_bootargs::guest::cmdline::{get, pairs, unique_pairs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let all = pairs(text);
    assert!(all.len() <= text.split_ascii_whitespace().count());
    for (k, v) in &all {
        assert!(!k.is_empty());
        assert!(!k.contains('='));
        assert!(!k.contains(|c: char| c.is_ascii_whitespace()));
        assert!(!v.contains(|c: char| c.is_ascii_whitespace()));
        let last = all.iter().rev().find(|(key, _)| key == k).unwrap().1;
        assert_eq!(get(text, k), Some(last));
    }
    let unique = unique_pairs(text);
    for (i, (k, v)) in unique.iter().enumerate() {
        assert!(unique[..i].iter().all(|(key, _)| key != k), "{k:?} twice");
        assert_eq!(get(text, k), Some(*v));
    }
    assert_eq!(
        unique.len(),
        all.iter()
            .enumerate()
            .filter(|(i, (k, _))| all[..*i].iter().all(|(key, _)| key != k))
            .count()
    );
    // A word with white space in it can never be a key.
    assert_eq!(get(text, "a b"), None);
});
