//! Incremental detokenization that never emits a broken UTF-8 character.
//!
//! Decoding token by token is wrong for byte-level BPE (a character can span tokens) and
//! for tokenizers whose decoders look at neighbours (spaces). So, like the established
//! servers, we decode a window: `prefix` = the tokens already turned into text (a few, for
//! context) and `prefix + new`; the new text is the difference. When the window's text
//! ends in U+FFFD the last character is incomplete and we wait for more tokens.

use tokenizers::Tokenizer;

/// How many already-emitted tokens to keep as decoding context.
const CONTEXT_TOKENS: usize = 6;

pub struct Detokenizer<'t> {
    tok: &'t Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the context window in `ids`.
    prefix_offset: usize,
    /// `ids[..read_offset]` are already emitted as text.
    read_offset: usize,
}

impl<'t> Detokenizer<'t> {
    pub fn new(tok: &'t Tokenizer, skip_special: bool) -> Self {
        Detokenizer { tok, skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, self.skip_special).unwrap_or_default()
    }

    /// Adds tokens and returns the text that became final.
    pub fn push(&mut self, new: &[u32]) -> String {
        self.ids.extend_from_slice(new);
        let prefix_text = self.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let full = self.decode(&self.ids[self.prefix_offset..]);
        // Wait while the window ends inside a character, or adds nothing yet.
        if full.len() <= prefix_text.len() || full.ends_with('\u{FFFD}') {
            return String::new();
        }
        let Some(out) = full.get(prefix_text.len()..) else { return String::new() };
        let out = out.to_string();
        self.read_offset = self.ids.len();
        self.prefix_offset = self.read_offset.saturating_sub(CONTEXT_TOKENS);
        out
    }

    /// Text still held (an incomplete character at the very end), decoded lossily.
    pub fn flush(&mut self) -> String {
        if self.read_offset >= self.ids.len() {
            return String::new();
        }
        let prefix_text = self.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let full = self.decode(&self.ids[self.prefix_offset..]);
        self.read_offset = self.ids.len();
        full.get(prefix_text.len()..).unwrap_or("").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> Tokenizer {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../worker/assets/llama-3.1-tokenizer.json");
        Tokenizer::from_file(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn streaming_equals_one_shot_and_never_splits_characters() {
        let tok = llama();
        for text in ["Hello, world! Ünïcödé — 日本語のテキスト 🦀🚀 done.", "  spaces   and\n\nnewlines\t", "emoji👨‍👩‍👧‍👦family"]
        {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            let mut d = Detokenizer::new(&tok, true);
            let mut out = String::new();
            for id in &ids {
                let piece = d.push(&[*id]);
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                out.push_str(&piece);
            }
            out.push_str(&d.flush());
            assert_eq!(out, tok.decode(&ids, true).unwrap());
            assert_eq!(out, text);
        }
    }
}
