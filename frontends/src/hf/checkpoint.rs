//! The safetensors files of a model folder, single or sharded, mapped into
//! a weight store, with checks that name the file and tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use optc_ir::{DType, WeightStore};
use serde_json::Value;

use super::HfError;

/// The mapped checkpoint and which file each tensor lives in.
pub struct Checkpoint {
    store: WeightStore,
    file_of: BTreeMap<String, PathBuf>,
    /// Where a tensor that is absent would have been looked for.
    main_file: PathBuf,
    /// How the file itself names a tensor, when that differs (GGUF's
    /// `blk.0.attn_q.weight` for `model.layers.0.self_attn.q_proj.weight`).
    file_name_of: Option<fn(&str) -> Option<String>>,
}

impl Checkpoint {
    /// Maps `model.safetensors`, or every shard listed by
    /// `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint, HfError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut store = WeightStore::new();
        let mut file_of = BTreeMap::new();
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| HfError::Io {
                path: index.clone(),
                source,
            })?;
            let json: Value = serde_json::from_str(&text).map_err(|e| HfError::Json {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let map = json
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| HfError::Config {
                    path: index.clone(),
                    message: "missing 'weight_map'".into(),
                })?;
            let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| HfError::Config {
                    path: index.clone(),
                    message: format!("weight_map entry for '{tensor}' is not a file name"),
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(HfError::Config {
                        path: index.clone(),
                        message: format!("shard name {file:?} must be a plain file name"),
                    });
                }
                shards.entry(file.to_string()).or_default().push(tensor.clone());
            }
            for (file, tensors) in shards {
                let path = dir.join(&file);
                let names = store.open_safetensors(&path)?;
                for t in tensors {
                    if !names.contains(&t) {
                        return Err(HfError::MissingTensor {
                            file: path,
                            tensor: t,
                        });
                    }
                    file_of.insert(t, path.clone());
                }
            }
            Ok(Checkpoint {
                store,
                file_of,
                main_file: index,
                file_name_of: None,
            })
        } else if single.exists() {
            for t in store.open_safetensors(&single)? {
                file_of.insert(t, single.clone());
            }
            Ok(Checkpoint {
                store,
                file_of,
                main_file: single,
                file_name_of: None,
            })
        } else {
            Err(HfError::NoCheckpoint {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// A checkpoint over tensors already in a store, all from one file whose
    /// own tensor names `file_name_of` gives (for error messages).
    pub fn from_store(
        store: WeightStore,
        tensors: Vec<String>,
        file: PathBuf,
        file_name_of: Option<fn(&str) -> Option<String>>,
    ) -> Checkpoint {
        let file_of = tensors.into_iter().map(|t| (t, file.clone())).collect();
        Checkpoint {
            store,
            file_of,
            main_file: file,
            file_name_of,
        }
    }

    /// `tensor` as the file names it (what the user can look up).
    fn shown(&self, tensor: &str) -> String {
        self.file_name_of
            .and_then(|f| f(tensor))
            .unwrap_or_else(|| tensor.to_string())
    }

    pub fn contains(&self, tensor: &str) -> bool {
        self.file_of.contains_key(tensor)
    }

    /// The dtype of `tensor` after checking it exists, is a float, and has
    /// the shape the config implies.
    pub fn expect(&self, tensor: &str, shape: &[usize]) -> Result<DType, HfError> {
        let file = self.file_of.get(tensor).ok_or_else(|| HfError::MissingTensor {
            file: self.main_file.clone(),
            tensor: self.shown(tensor),
        })?;
        let (dtype, found) = self.store.info(tensor)?;
        if found != shape {
            return Err(HfError::TensorShape {
                file: file.clone(),
                tensor: self.shown(tensor),
                expected: shape.to_vec(),
                found,
            });
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(HfError::TensorDType {
                file: file.clone(),
                tensor: self.shown(tensor),
                dtype,
            });
        }
        Ok(dtype)
    }

    /// The dtype most tensors have (the model dtype when the config is silent).
    pub fn majority_dtype(&self) -> DType {
        let mut counts: BTreeMap<DType, usize> = BTreeMap::new();
        for t in self.file_of.keys() {
            if let Ok((d, _)) = self.store.info(t) {
                *counts.entry(d).or_insert(0) += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or(DType::F32, |(d, _)| d)
    }

    pub fn into_store(self) -> WeightStore {
        self.store
    }
}
