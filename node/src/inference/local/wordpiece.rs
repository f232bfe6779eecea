//! BERT's tokenizer: basic splitting (whitespace, punctuation, CJK characters;
//! lower-casing and accent stripping for uncased models), then WordPiece against
//! the model's `vocab.txt`.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

/// Longest word looked up; longer ones are `[UNK]`.
const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary and its settings.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    lower: bool,
    /// `[CLS]`, `[SEP]`, `[UNK]`.
    pub cls: u32,
    sep: u32,
    unk: u32,
}

impl Tokenizer {
    /// From `vocab.txt` (one token per line, its line number is its id).
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
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| format!("vocab.txt has no {t}"))
        };
        Ok(Self {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            unk: id("[UNK]")?,
            vocab,
            lower,
        })
    }

    /// Token count of the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `[CLS] text [SEP]` as ids, at most `max` of them.
    pub fn encode(&self, text: &str, max: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        for word in self.words(text) {
            self.wordpiece(&word, &mut ids);
            if ids.len() >= max.saturating_sub(1) {
                break;
            }
        }
        ids.truncate(max.saturating_sub(1).max(1));
        ids.push(self.sep);
        ids
    }

    fn words(&self, text: &str) -> Vec<String> {
        let text: String = if self.lower {
            text.to_lowercase().nfd().filter(|c| !is_mark(*c)).collect()
        } else {
            text.to_owned()
        };
        let mut words = Vec::new();
        let mut cur = String::new();
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
                continue;
            }
            if c.is_whitespace() {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            } else if is_punctuation(c) || is_cjk(c) {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                words.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        words
    }

    fn wordpiece(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, "##");
                }
                if let Some(id) = self.vocab.get(&piece) {
                    found = Some(*id);
                    break;
                }
                end -= 1;
            }
            let Some(id) = found else {
                out.push(self.unk);
                return;
            };
            pieces.push(id);
            start = end;
        }
        out.extend(pieces);
    }
}

/// Combining marks (what accent stripping removes after NFD).
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036f | 0x1ab0..=0x1aff | 0x1dc0..=0x1dff | 0x20d0..=0x20ff | 0xfe20..=0xfe2f)
}

/// ASCII punctuation and the common Unicode punctuation blocks (BERT uses the
/// Unicode `P*` categories, which std does not expose).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32, 0x00a1..=0x00bf | 0x2010..=0x2027 | 0x2030..=0x205e | 0x3000..=0x303f | 0xff01..=0xff0f | 0xff1a..=0xff20)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4e00..=0x9fff | 0x3400..=0x4dbf | 0x20000..=0x2a6df | 0x2a700..=0x2b73f
        | 0x2b740..=0x2b81f | 0x2b820..=0x2ceaf | 0xf900..=0xfaff | 0x2f800..=0x2fa1f)
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
}
