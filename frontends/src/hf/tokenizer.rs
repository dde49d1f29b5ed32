//! `tokenizer.json` through the HF `tokenizers` crate (built without C
//! dependencies: fancy-regex instead of oniguruma).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::HfError;

/// The chat template of a folder: `chat_template.jinja` (transformers 5) or
/// `chat_template` in `tokenizer_config.json` (a string, or a list of named
/// templates of which `default` is taken).
pub fn chat_template(dir: &Path) -> Result<Option<String>, HfError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|source| HfError::Io { path: jinja, source });
    }
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| HfError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(match v.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(String::from),
        _ => None,
    })
}

/// A model's tokenizer.
pub struct HfTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

impl HfTokenizer {
    /// Loads `tokenizer.json` if the folder has one.
    pub fn load_if_present(dir: &Path) -> Result<Option<HfTokenizer>, HfError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| HfError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // A prompt is encoded whole, as transformers does by default (its
        // calls turn the file's truncation and padding off): never cut or
        // padded, and a malformed truncation (stride >= max_length, which
        // the crate asserts on at encode time) never runs.
        inner
            .with_truncation(None)
            .map_err(|e| HfError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?
            .with_padding(None);
        Ok(Some(HfTokenizer { path, inner }))
    }

    /// Wraps a tokenizer built elsewhere (e.g. from GGUF metadata).
    pub fn from_parts(path: PathBuf, inner: Tokenizer) -> HfTokenizer {
        HfTokenizer { path, inner }
    }

    /// Token ids of `text`; `special` adds what the tokenizer's
    /// post-processor adds (e.g. a BOS token), as transformers does by default.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>, HfError> {
        let enc = self.inner.encode(text, special).map_err(|e| HfError::Tokenizer {
            path: self.path.clone(),
            message: format!("encoding {text:?}: {e}"),
        })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of token ids (special tokens skipped when `skip_special`).
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String, HfError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i))
            .collect::<Result<_, _>>()
            .map_err(|_| HfError::Tokenizer {
                path: self.path.clone(),
                message: "token ids must be non-negative".into(),
            })?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| HfError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
