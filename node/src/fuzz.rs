//! Mutation-based input generation for the parsers' property tests: a valid input,
//! then a few random edits (bit flips, byte writes, inserts, deletes, truncation,
//! duplicated runs). Starting from valid bytes reaches the deep paths that purely
//! random bytes never get past the first check for. `scripts/fuzz` runs these tests
//! with many cases.

use proptest::prelude::*;

/// One edit at a position (taken modulo the length).
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Edit::Set(p, v)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Edit::Insert(p, v)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Duplicate(p, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        let at = |p: usize| if len == 0 { 0 } else { p % len };
        match *e {
            Edit::Flip(p, b) if len > 0 => bytes[at(p)] ^= 1 << b,
            Edit::Set(p, v) if len > 0 => bytes[at(p)] = v,
            Edit::Insert(p, v) => bytes.insert(at(p), v),
            Edit::Delete(p) if len > 0 => {
                bytes.remove(at(p));
            }
            Edit::Truncate(p) => bytes.truncate(at(p)),
            Edit::Duplicate(p, n) if len > 0 => {
                let start = at(p);
                let run = bytes[start..(start + n).min(len)].to_vec();
                bytes.splice(start..start, run);
            }
            _ => {}
        }
    }
    bytes
}

/// `seed` with 1 to 8 random edits.
pub fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(edit(), 1..8).prop_map(move |edits| apply(seed.clone(), &edits))
}

/// `seed` as text with 1 to 8 random byte edits (invalid UTF-8 replaced).
pub fn mutated_text(seed: String) -> impl Strategy<Value = String> {
    mutated(seed.into_bytes()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}
