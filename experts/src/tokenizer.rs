//! A thin wrapper over the `tokenizers` crate that maps its errors into ours and decodes
//! incrementally (a token can end in the middle of a multi-byte character).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{ExpertError, Result};

/// The tokenizer of a model.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ExpertError::model(
                path.parent().unwrap_or(path),
                "tokenizer.json is missing",
            ));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ExpertError::model(path, format!("bad tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self { inner }
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text; special tokens written in the text (e.g. `<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| ExpertError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ExpertError::Tokenizer(e.to_string()))
    }
}

/// Turns a stream of token ids into a stream of text pieces, emitting text only once it
/// forms complete characters.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Adds a token; returns the new complete text, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.len() > self.emitted && !text.ends_with('\u{fffd}') {
            let piece = text[self.emitted..].to_string();
            self.emitted = text.len();
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// Everything decoded so far.
    pub fn text(&self, tok: &TextTokenizer) -> Result<String> {
        tok.decode(&self.ids, true)
    }
}
