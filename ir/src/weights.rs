//! The weight store: named tensors that graphs refer to by key.
//!
//! Tensors come from memory-mapped safetensors files (nothing is read until
//! a tensor is materialised), from owned buffers, or from lazy views of other
//! entries (a slice for a tensor-parallel shard, a concat for a fused GEMM, a
//! cast). A view costs nothing until [`WeightStore::get`] builds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View as StView};

use crate::dtype::DType;
use crate::tensor::Tensor;

/// Why a weight could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor '{tensor}' has dtype {dtype}, which optc does not support")]
    UnsupportedDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("no weight named '{0}' in the store")]
    Unknown(String),
    #[error("weight '{0}' is already in the store")]
    Duplicate(String),
    #[error("view '{name}': {message}")]
    View { name: String, message: String },
    #[error("cannot write '{tensor}' as safetensors: {message}")]
    Write { tensor: String, message: String },
}

/// A lazy derivation of a weight from other weights.
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    /// Elements `start..end` of `source` along `axis`.
    Slice {
        source: String,
        axis: usize,
        start: usize,
        end: usize,
    },
    /// `sources` joined along `axis`.
    Concat { sources: Vec<String>, axis: usize },
    /// `source` converted to `dtype` (rounding as `Tensor::cast`).
    Cast { source: String, dtype: DType },
    /// The 2-D `source` with its axes swapped: a `[k, n]` weight that a
    /// matmul reads (GPT-2's Conv1D, an ONNX `MatMul` initializer) as the
    /// `[n, k]` weight a `linear` reads.
    Transpose { source: String },
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// A tensor computed on demand from bytes only its owner understands
/// (e.g. a quantised GGUF block), registered with
/// [`WeightStore::insert_lazy`].
pub trait LazyTensor: Send + Sync {
    /// Builds the tensor; it must have the dtype and shape it was registered with.
    fn materialise(&self) -> Result<Tensor, WeightError>;
}

enum Entry {
    Lazy {
        source: Arc<dyn LazyTensor>,
        dtype: DType,
        shape: Vec<usize>,
    },
    Mapped {
        file: Arc<MappedFile>,
        dtype: DType,
        shape: Vec<usize>,
        range: (usize, usize),
    },
    Owned(Arc<Tensor>),
    View {
        view: View,
        dtype: DType,
        shape: Vec<usize>,
    },
}

/// Named tensors, materialised on demand.
#[derive(Default)]
pub struct WeightStore {
    entries: BTreeMap<String, Entry>,
}

fn dtype_from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::U8 => DType::U8,
        StDtype::I16 => DType::I16,
        StDtype::U16 => DType::U16,
        StDtype::U32 => DType::U32,
        StDtype::U64 => DType::U64,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F8_E4M3 => DType::F8E4M3,
        StDtype::F8_E5M2 => DType::F8E5M2,
        StDtype::F8_E8M0 => DType::F8E8M0,
        StDtype::I8 => DType::I8,
        StDtype::I32 => DType::I32,
        StDtype::I64 => DType::I64,
        StDtype::BOOL => DType::Bool,
        _ => return None,
    })
}

fn dtype_to_st(d: DType) -> Option<StDtype> {
    Some(match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::U8 => StDtype::U8,
        DType::I16 => StDtype::I16,
        DType::U16 => StDtype::U16,
        DType::U32 => StDtype::U32,
        DType::U64 => StDtype::U64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::F8E4M3 => StDtype::F8_E4M3,
        DType::F8E5M2 => StDtype::F8_E5M2,
        DType::F8E8M0 => StDtype::F8_E8M0,
        DType::I8 => StDtype::I8,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
        DType::Bool => StDtype::BOOL,
        DType::I4
        | DType::U4
        | DType::I2
        | DType::U2
        | DType::F4E2M1
        | DType::F8E4M3Fnuz
        | DType::F8E5M2Fnuz => return None,
    })
}

impl WeightStore {
    pub fn new() -> WeightStore {
        WeightStore::default()
    }

    /// Maps a safetensors file and adds every tensor in it under its own
    /// name. Returns the names added. Nothing is read beyond the header.
    pub fn open_safetensors(&mut self, path: impl AsRef<Path>) -> Result<Vec<String>, WeightError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| WeightError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath by another
        // process is outside what optc can guard against (as for every
        // mmap-based loader).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| WeightError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mapped = Arc::new(MappedFile {
            path: path.clone(),
            map,
            data_start: 8 + header_len,
        });
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> = meta.tensors().into_iter().collect();
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        let mut added = Vec::new();
        for (name, info) in infos {
            let dtype = dtype_from_st(info.dtype).ok_or_else(|| WeightError::UnsupportedDType {
                path: path.clone(),
                tensor: name.clone(),
                dtype: format!("{:?}", info.dtype),
            })?;
            if self.entries.contains_key(&name) {
                return Err(WeightError::Duplicate(name));
            }
            self.entries.insert(
                name.clone(),
                Entry::Mapped {
                    file: mapped.clone(),
                    dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                },
            );
            added.push(name);
        }
        Ok(added)
    }

    /// Adds an owned tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> Result<(), WeightError> {
        let name = name.into();
        if self.entries.contains_key(&name) {
            return Err(WeightError::Duplicate(name));
        }
        self.entries.insert(name, Entry::Owned(Arc::new(t)));
        Ok(())
    }

    /// Adds a tensor that `source` builds on demand with the given dtype and shape.
    pub fn insert_lazy(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        source: Arc<dyn LazyTensor>,
    ) -> Result<(), WeightError> {
        let name = name.into();
        if self.entries.contains_key(&name) {
            return Err(WeightError::Duplicate(name));
        }
        self.entries.insert(name, Entry::Lazy { source, dtype, shape });
        Ok(())
    }

    /// Adds a lazy view, checking its sources and shapes now so that
    /// materialising it later cannot fail on shape grounds.
    pub fn add_view(&mut self, name: impl Into<String>, view: View) -> Result<(), WeightError> {
        let name = name.into();
        if self.entries.contains_key(&name) {
            return Err(WeightError::Duplicate(name));
        }
        let bad = |message: String| WeightError::View {
            name: name.clone(),
            message,
        };
        let (dtype, shape) = match &view {
            View::Slice {
                source,
                axis,
                start,
                end,
            } => {
                let (dt, mut shape) = self.info(source)?;
                if *axis >= shape.len() || start > end || *end > shape[*axis] {
                    return Err(bad(format!(
                        "slice {start}..{end} on axis {axis} does not fit {source} {shape:?}"
                    )));
                }
                shape[*axis] = end - start;
                (dt, shape)
            }
            View::Concat { sources, axis } => {
                let first = sources.first().ok_or_else(|| bad("concat of nothing".into()))?;
                let (dt, mut shape) = self.info(first)?;
                if *axis >= shape.len() {
                    return Err(bad(format!("axis {axis} is out of range for {first} {shape:?}")));
                }
                let mut total = 0;
                for s in sources {
                    let (d2, s2) = self.info(s)?;
                    let fits = d2 == dt
                        && s2.len() == shape.len()
                        && s2
                            .iter()
                            .zip(&shape)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b);
                    if !fits {
                        return Err(bad(format!(
                            "{s} {d2}{s2:?} does not join {first} {dt}{shape:?} on axis {axis}"
                        )));
                    }
                    total += s2[*axis];
                }
                shape[*axis] = total;
                (dt, shape)
            }
            View::Cast { source, dtype } => (*dtype, self.info(source)?.1),
            View::Transpose { source } => {
                let (dt, shape) = self.info(source)?;
                match shape[..] {
                    [rows, cols] => (dt, vec![cols, rows]),
                    _ => return Err(bad(format!("transpose of {source} {shape:?}, which is not 2-D"))),
                }
            }
        };
        self.entries.insert(name, Entry::View { view, dtype, shape });
        Ok(())
    }

    /// The view behind `name`, if it is one: a pass that names its views
    /// after their sources reuses one it made, never a same-named tensor.
    pub fn view(&self, name: &str) -> Option<&View> {
        match self.entries.get(name) {
            Some(Entry::View { view, .. }) => Some(view),
            _ => None,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Dtype and shape without materialising anything.
    pub fn info(&self, name: &str) -> Result<(DType, Vec<usize>), WeightError> {
        match self.entries.get(name) {
            None => Err(WeightError::Unknown(name.into())),
            Some(Entry::Mapped { dtype, shape, .. })
            | Some(Entry::View { dtype, shape, .. })
            | Some(Entry::Lazy { dtype, shape, .. }) => Ok((*dtype, shape.clone())),
            Some(Entry::Owned(t)) => Ok((t.dtype(), t.shape().to_vec())),
        }
    }

    /// Builds the tensor (reads the mapped bytes, applies views).
    pub fn get(&self, name: &str) -> Result<Tensor, WeightError> {
        match self.entries.get(name) {
            None => Err(WeightError::Unknown(name.into())),
            Some(Entry::Owned(t)) => Ok((**t).clone()),
            Some(Entry::Mapped {
                file,
                dtype,
                shape,
                range,
            }) => {
                let bytes = file
                    .map
                    .get(file.data_start + range.0..file.data_start + range.1)
                    .ok_or_else(|| WeightError::Format {
                        path: file.path.clone(),
                        message: format!("data of '{name}' lies outside the file"),
                    })?;
                Tensor::from_le_bytes(*dtype, shape, bytes).map_err(|e| WeightError::Format {
                    path: file.path.clone(),
                    message: format!("tensor '{name}': {e}"),
                })
            }
            Some(Entry::View { view, .. }) => self.build_view(view),
            Some(Entry::Lazy { source, dtype, shape }) => {
                let t = source.materialise()?;
                if t.dtype() != *dtype || t.shape() != shape.as_slice() {
                    return Err(WeightError::View {
                        name: name.into(),
                        message: format!(
                            "lazy source built {}{:?}, not {dtype}{shape:?}",
                            t.dtype(),
                            t.shape()
                        ),
                    });
                }
                Ok(t)
            }
        }
    }

    /// The tensor's little-endian bytes (what [`Tensor::to_le_bytes`] of
    /// [`WeightStore::get`] gives), borrowed straight from the mapped file
    /// where it lies there whole, and joined from the parts' bytes for an
    /// axis-0 concat: uploading a checkpoint to a device then copies each
    /// byte once instead of parsing it into a tensor and back.
    pub fn get_le_bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>, WeightError> {
        let mut parts = self.get_le_parts(name)?;
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Ok(std::borrow::Cow::Owned(parts.concat()))
    }

    /// The bytes of [`WeightStore::get_le_bytes`] as the pieces that make
    /// them, in order: an axis-0 concat of mapped tensors is its parts,
    /// each borrowed from the file, so a device upload can copy each piece
    /// to its offset without joining them on the host first.
    pub fn get_le_parts(&self, name: &str) -> Result<Vec<std::borrow::Cow<'_, [u8]>>, WeightError> {
        use std::borrow::Cow;
        match self.entries.get(name) {
            None => Err(WeightError::Unknown(name.into())),
            Some(Entry::Mapped { file, range, .. }) => file
                .map
                .get(file.data_start + range.0..file.data_start + range.1)
                .map(|b| vec![Cow::Borrowed(b)])
                .ok_or_else(|| WeightError::Format {
                    path: file.path.clone(),
                    message: format!("data of '{name}' lies outside the file"),
                }),
            Some(Entry::View {
                view: View::Concat { sources, axis: 0 },
                dtype,
                ..
            }) if sources
                .iter()
                .all(|s| self.info(s).is_ok_and(|(d, sh)| d == *dtype && !sh.is_empty())) =>
            {
                let mut out = Vec::new();
                for s in sources {
                    out.extend(self.get_le_parts(s)?);
                }
                Ok(out)
            }
            Some(_) => Ok(vec![Cow::Owned(self.get(name)?.to_le_bytes())]),
        }
    }

    /// The tensor converted to f32 (bf16/f16/f8 weights widen exactly).
    pub fn get_f32(&self, name: &str) -> Result<Tensor, WeightError> {
        Ok(self.get(name)?.cast(DType::F32))
    }

    fn build_view(&self, view: &View) -> Result<Tensor, WeightError> {
        use crate::ops::{Concat, EvalCx, OpImpl, Slice};
        let bindings = Default::default();
        let cx = EvalCx { bindings: &bindings };
        let run = |r: Result<Vec<Tensor>, String>| {
            r.map(|mut v| v.remove(0)).map_err(|message| WeightError::View {
                name: format!("{view:?}"),
                message,
            })
        };
        match view {
            View::Slice {
                source,
                axis,
                start,
                end,
            } => {
                let t = self.get(source)?;
                let s = Slice {
                    axis: *axis as i64,
                    start: *start as i64,
                    end: Some(*end as i64),
                    step: 1,
                };
                run(s.eval(&[&t], &cx))
            }
            View::Concat { sources, axis } => {
                let parts: Vec<Tensor> = sources.iter().map(|s| self.get(s)).collect::<Result<_, _>>()?;
                let refs: Vec<&Tensor> = parts.iter().collect();
                run(Concat { axis: *axis as i64 }.eval(&refs, &cx))
            }
            View::Cast { source, dtype } => Ok(self.get(source)?.cast(*dtype)),
            View::Transpose { source } => {
                let (dtype, shape) = self.info(source)?;
                let [rows, cols] = shape[..] else {
                    return Err(WeightError::View {
                        name: format!("{view:?}"),
                        message: format!("{source} {shape:?} is not 2-D"),
                    });
                };
                let size = dtype.storage_bytes(1);
                if dtype.storage_bytes(2) != 2 * size {
                    // Packed sub-byte elements: the interpreter's transpose.
                    let perm = crate::ops::Transpose { perm: vec![1, 0] };
                    return run(perm.eval(&[&self.get(source)?], &cx));
                }
                // From the mapped bytes where they lie whole (no tensor
                // parsed and written back first).
                let bytes = transpose_bytes(&self.get_le_bytes(source)?, rows, cols, size);
                Tensor::from_le_bytes(dtype, &[cols, rows], &bytes).map_err(|e| WeightError::View {
                    name: format!("{view:?}"),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The `rows × cols` matrix of `size`-byte elements in `src`, transposed,
/// a 32 × 32 tile at a time so both sides stay in cache (a weight of a
/// billion-parameter model moves at memory speed, not one miss an element).
fn transpose_bytes(src: &[u8], rows: usize, cols: usize, size: usize) -> Vec<u8> {
    const TILE: usize = 32;
    let mut out = vec![0u8; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    let from = (r * cols + c) * size;
                    let to = (c * rows + r) * size;
                    out[to..to + size].copy_from_slice(&src[from..from + size]);
                }
            }
        }
    }
    out
}

struct StTensor<'a> {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl StView for StTensor<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises named tensors into safetensors bytes.
pub fn to_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, WeightError> {
    let mut views = Vec::new();
    for (name, t) in tensors {
        let dtype = dtype_to_st(t.dtype()).ok_or_else(|| WeightError::Write {
            tensor: name.clone(),
            message: format!("{} has no safetensors dtype", t.dtype()),
        })?;
        views.push((
            name.clone(),
            StTensor {
                dtype,
                shape: t.shape().to_vec(),
                bytes: t.to_le_bytes().into(),
            },
        ));
    }
    safetensors::tensor::serialize(views, None).map_err(|e| WeightError::Write {
        tensor: "(file)".into(),
        message: e.to_string(),
    })
}

/// Writes named tensors to a safetensors file.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<(), WeightError> {
    let bytes = to_safetensors(tensors)?;
    std::fs::write(path.as_ref(), bytes).map_err(|source| WeightError::Io {
        path: path.as_ref().to_path_buf(),
        source,
    })
}
