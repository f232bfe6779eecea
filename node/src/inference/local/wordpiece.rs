//! BERT's tokenizer, as the model's own `tokenizer.json` describes it (Hugging Face
//! `BertNormalizer`, `BertPreTokenizer`, `WordPiece`), or from `vocab.txt` and
//! `tokenizer_config.json` when there is none:
//!
//! 1. normalise: drop NUL, U+FFFD and control and format characters (`Cc`, `Cf`,
//!    `Co`, `Cs`, `Cn`; tab and newlines are whitespace), map whitespace to a space,
//!    put spaces around CJK ideographs, strip accents (NFD, then drop every nonspacing
//!    mark, `Mn`), lower-case, in that order;
//! 2. split on whitespace, and make every punctuation character (ASCII punctuation and
//!    the Unicode `P*` categories) a word of its own;
//! 3. WordPiece: longest vocabulary match from the start of each word, then
//!    `##`-prefixed continuations; a word with no match, or longer than the limit,
//!    is `[UNK]`.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_general_category::{GeneralCategory as Cat, get_general_category};
use unicode_normalization::UnicodeNormalization;

/// How text is normalised before it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Normalizer {
    clean_text: bool,
    chinese: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// A WordPiece vocabulary and its settings.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    normalizer: Normalizer,
    prefix: String,
    max_word_chars: usize,
    /// `[CLS]`, `[SEP]`, `[UNK]`.
    pub cls: u32,
    sep: u32,
    unk: u32,
}

/// The parts of `tokenizer.json` a BERT tokenizer has.
#[derive(Deserialize)]
struct Json {
    normalizer: Option<JsonNormalizer>,
    pre_tokenizer: Option<Typed>,
    model: JsonModel,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct JsonNormalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

#[derive(Deserialize)]
struct JsonModel {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "hashes")]
    continuing_subword_prefix: String,
    #[serde(default = "hundred")]
    max_input_chars_per_word: usize,
}

fn yes() -> bool {
    true
}
fn unk() -> String {
    "[UNK]".into()
}
fn hashes() -> String {
    "##".into()
}
fn hundred() -> usize {
    100
}

impl Tokenizer {
    /// From `vocab.txt` (one token per line, its line number is its id): BERT's basic
    /// tokenizer, lower-casing and stripping accents when `lower`.
    pub fn new(vocab_txt: &str, lower: bool) -> Result<Self, String> {
        let vocab: HashMap<String, u32> = vocab_txt
            .lines()
            .enumerate()
            .map(|(i, t)| {
                Ok((
                    t.trim_end_matches('\r').to_owned(),
                    u32::try_from(i).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let normalizer = Normalizer {
            clean_text: true,
            chinese: true,
            strip_accents: lower,
            lowercase: lower,
        };
        Self::with(vocab, normalizer, &unk(), hashes(), hundred())
    }

    /// From a Hugging Face `tokenizer.json`; a normaliser, pre-tokenizer or model
    /// other than BERT's is refused, naming it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("tokenizer.json: {e}"))?;
        if j.model.kind != "WordPiece" {
            return Err(format!(
                "tokenizer.json: model type {} (only WordPiece, BERT's, is built in)",
                j.model.kind
            ));
        }
        if let Some(p) = j.pre_tokenizer.filter(|p| p.kind != "BertPreTokenizer") {
            return Err(format!(
                "tokenizer.json: pre_tokenizer {} (only BertPreTokenizer is built in)",
                p.kind
            ));
        }
        let normalizer = match j.normalizer {
            Some(n) if n.kind == "BertNormalizer" => Normalizer {
                clean_text: n.clean_text,
                chinese: n.handle_chinese_chars,
                // As in BERT: unset follows lower-casing.
                strip_accents: n.strip_accents.unwrap_or(n.lowercase),
                lowercase: n.lowercase,
            },
            Some(n) => {
                return Err(format!(
                    "tokenizer.json: normalizer {} (only BertNormalizer is built in)",
                    n.kind
                ));
            }
            None => Normalizer {
                clean_text: false,
                chinese: false,
                strip_accents: false,
                lowercase: false,
            },
        };
        let m = j.model;
        Self::with(
            m.vocab,
            normalizer,
            &m.unk_token,
            m.continuing_subword_prefix,
            m.max_input_chars_per_word,
        )
    }

    fn with(
        vocab: HashMap<String, u32>,
        normalizer: Normalizer,
        unk: &str,
        prefix: String,
        max_word_chars: usize,
    ) -> Result<Self, String> {
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {t}"))
        };
        Ok(Self {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            unk: id(unk)?,
            vocab,
            normalizer,
            prefix,
            max_word_chars,
        })
    }

    /// Rows the embedding matrix needs: one past the largest id.
    pub fn vocab_size(&self) -> usize {
        self.vocab.values().max().map_or(0, |m| *m as usize + 1)
    }

    /// `[CLS] text [SEP]` as ids, at most `max` of them.
    pub fn encode(&self, text: &str, max: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        ids.extend(self.pieces(text, max.saturating_sub(2)));
        ids.push(self.sep);
        ids
    }

    /// `[CLS] a [SEP] b [SEP]` from the word pieces of `a` and `b`, at most `max`
    /// ids, and how many belong to the first segment (`[CLS] a [SEP]`). Too long a
    /// pair is cut as BERT's tokenizers cut it (`longest_first`): only the longer side
    /// when that is enough, else both to half, the extra one to the longer.
    pub fn pair(&self, a: &[u32], b: &[u32], max: usize) -> (Vec<u32>, usize) {
        let target = max.saturating_sub(3);
        let (mut na, mut nb) = (a.len(), b.len());
        if na + nb > target {
            let (short, long) = (na.min(nb), na.max(nb));
            let (mut n_short, mut n_long) =
                (short, long.min(target.saturating_sub(short).max(short)));
            if n_short + n_long > target {
                n_short = target / 2;
                n_long = n_short + target % 2;
            }
            (na, nb) = if na > nb {
                (n_long, n_short)
            } else {
                (n_short, n_long)
            };
        }
        let mut ids = Vec::with_capacity(na + nb + 3);
        ids.push(self.cls);
        ids.extend_from_slice(&a[..na]);
        ids.push(self.sep);
        let first = ids.len();
        ids.extend_from_slice(&b[..nb]);
        ids.push(self.sep);
        (ids, first)
    }

    /// The word pieces of `text`, at most `limit` of them.
    pub fn pieces(&self, text: &str, limit: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        if limit == 0 {
            return ids;
        }
        let normal = self.normalizer.apply(text);
        for word in words(&normal) {
            self.wordpiece(word, &mut ids);
            if ids.len() >= limit {
                break;
            }
        }
        ids.truncate(limit);
        ids
    }

    fn wordpiece(&self, word: &str, out: &mut Vec<u32>) {
        if word.chars().count() > self.max_word_chars {
            out.push(self.unk);
            return;
        }
        let at = out.len();
        let mut start = 0;
        let mut piece = String::new();
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(id) = self.vocab.get(&piece) {
                    found = Some(*id);
                    break;
                }
                // The previous character boundary.
                end = word[..end]
                    .char_indices()
                    .next_back()
                    .map_or(start, |(i, _)| i);
            }
            let Some(id) = found else {
                out.truncate(at);
                out.push(self.unk);
                return;
            };
            out.push(id);
            start = end;
        }
    }
}

impl Normalizer {
    fn apply(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    s.push(' ');
                    continue;
                }
            }
            if self.chinese && is_cjk(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            s = s
                .nfd()
                .filter(|c| get_general_category(*c) != Cat::NonspacingMark)
                .collect();
        }
        if self.lowercase {
            // Character by character, as BERT does (no final-sigma rule).
            s = s.chars().flat_map(char::to_lowercase).collect();
        }
        s
    }
}

/// BERT's pre-tokenizer: words split on whitespace, each punctuation character alone.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).flat_map(|chunk| {
        let mut out = Vec::new();
        let mut from = 0;
        for (i, c) in chunk.char_indices() {
            if is_punctuation(c) {
                if from < i {
                    out.push(&chunk[from..i]);
                }
                out.push(&chunk[i..i + c.len_utf8()]);
                from = i + c.len_utf8();
            }
        }
        if from < chunk.len() {
            out.push(&chunk[from..]);
        }
        out
    })
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control, format, private-use, surrogate and unassigned characters, but not the
/// whitespace controls.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r')
        && matches!(
            get_general_category(c),
            Cat::Control | Cat::Format | Cat::PrivateUse | Cat::Surrogate | Cat::Unassigned
        )
}

/// ASCII punctuation (which includes symbols such as `$`, `+`, `^`) and every
/// Unicode punctuation category.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            Cat::ConnectorPunctuation
                | Cat::DashPunctuation
                | Cat::OpenPunctuation
                | Cat::ClosePunctuation
                | Cat::InitialPunctuation
                | Cat::FinalPunctuation
                | Cat::OtherPunctuation
        )
}

/// The CJK Unified Ideographs blocks BERT treats as single-character words (its
/// ranges, including the one that starts at U+2B920).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4e00..=0x9fff | 0x3400..=0x4dbf | 0x20000..=0x2a6df | 0x2a700..=0x2b73f
        | 0x2b740..=0x2b81f | 0x2b920..=0x2ceaf | 0xf900..=0xfaff | 0x2f800..=0x2fa1f)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text: `[CLS] … [SEP]`, within the length, every id in the vocabulary.
        #[test]
        fn any_text_encodes_within_bounds(text in "\\PC{0,200}", max in 2usize..40) {
            let t = Tokenizer::new("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n##b\nab\n.", true).unwrap();
            let ids = t.encode(&text, max);
            prop_assert!(ids.len() <= max && ids.len() >= 2);
            prop_assert_eq!(ids[0], 2);
            prop_assert_eq!(*ids.last().unwrap(), 3);
            prop_assert!(ids.iter().all(|i| (*i as usize) < t.vocab_size()));
        }
    }

    #[test]
    fn splits_lowercases_and_finds_word_pieces() {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\nun\n##aff\n##able\n,\n!\ncafe\n中";
        let t = Tokenizer::new(vocab, true).unwrap();
        assert_eq!(t.encode("Hello, WORLD!", 64), [2, 4, 9, 5, 10, 3]);
        assert_eq!(t.encode("unaffable café 中", 64), [2, 6, 7, 8, 11, 12, 3]);
        assert_eq!(t.encode("xyz", 64), [2, 1, 3]);
        assert_eq!(t.encode("hello hello hello hello", 4), [2, 4, 4, 3]);
        assert!(Tokenizer::new("a\nb", true).unwrap_err().contains("[CLS]"));
    }

    #[test]
    fn pairs_get_segments_and_are_cut_longest_first() {
        let t = Tokenizer::new("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\nb", true).unwrap();
        let p = |text: &str| t.pieces(text, usize::MAX);
        let (a, b) = (p(&"a ".repeat(10)), p(&"b ".repeat(3)));
        assert_eq!(t.pair(&p("a"), &p("b b"), 64), (vec![2, 4, 3, 5, 5, 3], 3));
        // Room for 7: only the longer side is cut, to what the shorter leaves.
        assert_eq!(t.pair(&a, &b, 10), (vec![2, 4, 4, 4, 4, 3, 5, 5, 5, 3], 6));
        assert_eq!(t.pair(&b, &a, 10).1, 5);
        // Both longer than half: 3 and 4, the extra one to the longer (the second
        // on a tie).
        let long_b = p(&"b ".repeat(12));
        assert_eq!(
            t.pair(&a, &long_b, 10),
            (vec![2, 4, 4, 4, 3, 5, 5, 5, 5, 3], 5)
        );
        assert_eq!(t.pair(&a, &a[..8], 10).1, 6);
        assert_eq!(t.pair(&a, &a, 10).1, 5);
    }
}
