//! The tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`: a
//! byte-level BPE with vocabulary and merges), built the way transformers
//! builds it from the same metadata: GPT-2 pre-tokenisation and decoding,
//! control tokens as special tokens, user-defined tokens as added tokens.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::reader::{GgufHeader, MetaValue};
use super::GgufError;
use crate::hf::HfTokenizer;

fn strings<'a>(h: &'a GgufHeader, key: &str) -> Option<Vec<&'a str>> {
    h.metadata
        .get(key)?
        .as_array()?
        .iter()
        .map(MetaValue::as_str)
        .collect::<Option<Vec<_>>>()
}

pub fn from_metadata(path: &Path, h: &GgufHeader) -> Result<HfTokenizer, GgufError> {
    let err = |message: String| GgufError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let model = h
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("(none)");
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model '{model}' is not supported (supported: gpt2)"
        )));
    }
    let tokens = strings(h, "tokenizer.ggml.tokens")
        .ok_or_else(|| err("tokenizer.ggml.tokens is missing or not strings".into()))?;
    let merges = strings(h, "tokenizer.ggml.merges")
        .ok_or_else(|| err("tokenizer.ggml.merges is missing or not strings".into()))?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("building the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let types: Vec<i64> = h
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect())
        .unwrap_or_default();
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.to_string(), true))
        .collect();
    tok.add_special_tokens(&special);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 4)
        .map(|(s, _)| AddedToken::from(s.to_string(), false).normalized(false))
        .collect();
    tok.add_tokens(&user);
    Ok(HfTokenizer::from_parts(path.to_path_buf(), tok))
}
