//! umT5's tokenizer as Wan2.1 calls it: `HuggingfaceTokenizer(name, seq_len=text_len,
//! clean='whitespace')`, i.e. Wan's prompt cleaning, then the tokenizer.json pipeline with
//! `add_special_tokens=True` (`</s>` appended), truncation to `text_len` (the `</s>` is kept:
//! the text is cut to `text_len - 1` tokens first) and padding to `text_len` with `<pad>`.

use super::clean::wan_clean;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// Token ids and attention masks (1 = token, 0 = padding), one row of `text_len` per prompt.
pub type IdsAndMasks = (Vec<Vec<i64>>, Vec<Vec<i64>>);

pub struct Umt5Tokenizer {
    tok: Tokenizer,
    text_len: usize,
    path: PathBuf,
}

impl Umt5Tokenizer {
    /// Loads a `tokenizer.json` (Wan's `google/umt5-xxl/tokenizer.json` or diffusers'
    /// `tokenizer/tokenizer.json`) for sequences of `text_len` tokens.
    pub fn from_file(path: &Path, text_len: usize) -> Result<Umt5Tokenizer> {
        if text_len == 0 {
            bail!("umT5 tokenizer: text_len must be at least 1 (room for </s>)");
        }
        if !path.is_file() {
            bail!("umT5 tokenizer file {} does not exist", path.display());
        }
        let mut tok = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load umT5 tokenizer {}: {e}", path.display()))?;
        let pad_id = tok.token_to_id("<pad>").with_context(|| {
            format!(
                "umT5 tokenizer {} has no <pad> token (umT5's is id 0)",
                path.display()
            )
        })?;
        if tok.token_to_id("</s>").is_none() {
            bail!("umT5 tokenizer {} has no </s> token", path.display());
        }
        // transformers' settings for padding='max_length', truncation=True, max_length=text_len.
        tok.with_truncation(Some(TruncationParams {
            max_length: text_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| anyhow!("umT5 tokenizer {}: {e}", path.display()))?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(text_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: "<pad>".into(),
        }));
        Ok(Umt5Tokenizer {
            tok,
            text_len,
            path: path.to_path_buf(),
        })
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Number of ids the tokenizer can produce (pieces and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ids and attention masks, `text_len` each, of the cleaned prompts.
    pub fn encode_ids(&self, prompts: &[String]) -> Result<IdsAndMasks> {
        let cleaned: Vec<String> = prompts.iter().map(|p| wan_clean(p)).collect();
        let encs = self
            .tok
            .encode_batch(cleaned, true)
            .map_err(|e| anyhow!("umT5 tokenizer {}: {e}", self.path.display()))?;
        let mut ids = Vec::with_capacity(encs.len());
        let mut masks = Vec::with_capacity(encs.len());
        for e in encs {
            if e.get_ids().len() != self.text_len {
                bail!(
                    "umT5 tokenizer {} produced {} ids, expected {} (does the file set its own \
                     truncation or padding?)",
                    self.path.display(),
                    e.get_ids().len(),
                    self.text_len
                );
            }
            ids.push(e.get_ids().iter().map(|&i| i as i64).collect());
            masks.push(e.get_attention_mask().iter().map(|&m| m as i64).collect());
        }
        Ok((ids, masks))
    }

    /// (ids [B, text_len] int64, mask [B, text_len] int64) on the CPU.
    pub fn encode(&self, prompts: &[String]) -> Result<(Tensor, Tensor)> {
        if prompts.is_empty() {
            bail!("umT5 tokenizer: no prompts to encode");
        }
        let (ids, masks) = self.encode_ids(prompts)?;
        let b = prompts.len() as i64;
        let l = self.text_len as i64;
        let flat = |v: Vec<Vec<i64>>| Tensor::from_slice(&v.concat()).view([b, l]);
        Ok((flat(ids), flat(masks)))
    }
}
