//! Parameters, buffers and constants out of a `.pt2` archive. Each named
//! tensor is a view (sizes, strides, storage offset, in elements) of one
//! raw storage entry; tied weights share an entry. Views are copied out
//! contiguous, once, into the weight store.

use std::collections::BTreeMap;

use optc_ir::{DType, Tensor};

use super::archive::Archive;
use super::import::dtype_of;
use super::schema::{PayloadConfig, PayloadMeta, SymInt, TensorMeta};

/// The payload configs of one program: weights, then constants.
pub struct Payloads<'a> {
    ar: &'a Archive<'a>,
    weights: BTreeMap<String, PayloadMeta>,
    constants: BTreeMap<String, PayloadMeta>,
}

const WEIGHTS: &str = "data/weights/";
const CONSTANTS: &str = "data/constants/";

fn config(ar: &Archive, path: &str) -> Result<BTreeMap<String, PayloadMeta>, String> {
    if !ar.has(path) {
        return Ok(BTreeMap::new());
    }
    let text = ar.text(path)?;
    let c: PayloadConfig = serde_json::from_str(text).map_err(|e| format!("{path}: {e}"))?;
    Ok(c.config)
}

impl<'a> Payloads<'a> {
    pub fn new(ar: &'a Archive<'a>, model: &str) -> Result<Payloads<'a>, String> {
        Ok(Payloads {
            ar,
            weights: config(ar, &format!("{WEIGHTS}{model}_weights_config.json"))?,
            constants: config(ar, &format!("{CONSTANTS}{model}_constants_config.json"))?,
        })
    }

    /// The tensor stored under `fqn` (weights first, then constants, where
    /// torch puts non-persistent buffers and lifted constants).
    pub fn tensor(&self, fqn: &str) -> Result<Tensor, String> {
        let (dir, meta) = if let Some(m) = self.weights.get(fqn) {
            (WEIGHTS, m)
        } else if let Some(m) = self.constants.get(fqn) {
            (CONSTANTS, m)
        } else {
            return Err(
                "the archive has no payload for it (missing from the weights and constants configs)".into(),
            );
        };
        if meta.use_pickle {
            return Err("stored as a Python pickle; optc reads raw tensor payloads only".into());
        }
        let tm = meta
            .tensor_meta
            .as_ref()
            .ok_or("its payload has no tensor_meta")?;
        let bytes = self.ar.get(&format!("{dir}{}", meta.path_name))?;
        strided_copy(tm, bytes)
    }
}

fn concrete(v: &SymInt, what: &str) -> Result<i64, String> {
    match v {
        SymInt::AsInt(i) => Ok(*i),
        SymInt::AsExpr(e) => Err(format!("symbolic {what} {:?}", e.expr_str)),
    }
}

/// How many bytes a view with zero strides may copy out of a smaller
/// storage entry (a broadcast weight): 1 GiB.
const VIEW_EXPANSION_LIMIT: usize = 1 << 30;

/// The contiguous tensor a (sizes, strides, offset) view of `storage` holds.
fn strided_copy(tm: &TensorMeta, storage: &[u8]) -> Result<Tensor, String> {
    let dtype = dtype_of(tm.dtype)?;
    if matches!(dtype, DType::I4 | DType::U4) {
        return Err(format!("{dtype} payloads are not supported"));
    }
    let elem = dtype.storage_bytes(1);
    let sizes: Vec<i64> = tm
        .sizes
        .iter()
        .map(|s| concrete(s, "size"))
        .collect::<Result<_, _>>()?;
    let strides: Vec<i64> = tm
        .strides
        .iter()
        .map(|s| concrete(s, "stride"))
        .collect::<Result<_, _>>()?;
    let offset = tm
        .storage_offset
        .as_ref()
        .map_or(Ok(0), |o| concrete(o, "storage offset"))?;
    if sizes.iter().any(|&s| s < 0) || strides.iter().any(|&s| s < 0) || offset < 0 {
        return Err(format!(
            "negative size, stride or offset in {sizes:?} / {strides:?} / {offset}"
        ));
    }
    if strides.len() != sizes.len() {
        return Err(format!("{} strides for {} sizes", strides.len(), sizes.len()));
    }
    let shape: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("element count overflows")?;
    if numel == 0 {
        return Tensor::from_le_bytes(dtype, &shape, &[]).map_err(|e| e.to_string());
    }
    // The last element's index in the storage, checked against its size.
    let last = sizes
        .iter()
        .zip(&strides)
        .try_fold(offset as u128, |a, (&s, &st)| {
            a.checked_add((s as u128 - 1).checked_mul(st as u128)?)
        })
        .ok_or("index overflows")?;
    let need = (last + 1).checked_mul(elem as u128).ok_or("index overflows")?;
    if need > storage.len() as u128 {
        return Err(format!(
            "its view (sizes {sizes:?}, strides {strides:?}, offset {offset}) needs {need} bytes but the storage entry holds {}",
            storage.len()
        ));
    }
    // Zero strides repeat elements: a view may be larger than its storage,
    // but not by more than VIEW_EXPANSION_LIMIT bytes of copies.
    let bytes = numel.checked_mul(elem).ok_or("element count overflows")?;
    if bytes > storage.len().max(VIEW_EXPANSION_LIMIT) {
        return Err(format!(
            "its view (sizes {sizes:?}, strides {strides:?}) repeats {} storage bytes into {bytes}, over the {VIEW_EXPANSION_LIMIT}-byte limit",
            storage.len()
        ));
    }
    let contiguous = {
        let mut expect = 1i128;
        let mut ok = true;
        for (&s, &st) in sizes.iter().zip(&strides).rev() {
            if s != 1 && i128::from(st) != expect {
                ok = false;
            }
            expect = expect.saturating_mul(i128::from(s));
        }
        ok
    };
    let start = offset as usize * elem;
    if contiguous {
        let bytes = &storage[start..start + bytes];
        return Tensor::from_le_bytes(dtype, &shape, bytes).map_err(|e| e.to_string());
    }
    let mut out = Vec::with_capacity(bytes);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at = offset as usize
            + idx
                .iter()
                .zip(&strides)
                .map(|(&i, &st)| i * st as usize)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::from_le_bytes(dtype, &shape, &out).map_err(|e| e.to_string())
}
