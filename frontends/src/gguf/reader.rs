//! The GGUF container (versions 2 and 3): header, metadata key/values and
//! tensor infos, read with bounds checks so that a malformed file gives an
//! error naming the byte offset and what was wrong (this reader is fuzzed).

use std::collections::BTreeMap;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor's data is and how it is encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (fastest) axis.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The torch-order shape (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }
}

/// A parsed header: everything but the tensor data.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data section in the file (aligned).
    pub data_start: u64,
    pub alignment: u64,
}

/// A malformed header: the byte offset and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {message}")]
pub struct FormatError {
    pub offset: usize,
    pub message: String,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Upper bounds that no real file comes near; they keep a corrupt count
/// from turning into a huge allocation.
const MAX_ITEMS: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;
const MAX_NESTING: usize = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, FormatError> {
        Err(FormatError {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!("file ends inside {what} ({n} bytes needed)")),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<u64, FormatError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > MAX_ITEMS {
            return Err(FormatError {
                offset: at,
                message: format!("{what} {n} is implausibly large"),
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > (self.bytes.len() - self.pos) as u64 {
            return Err(FormatError {
                offset: at,
                message: format!("{what} of length {len} runs past the end of the file"),
            });
        }
        let s = self.take(len as usize, what)?;
        String::from_utf8(s.to_vec()).or_else(|_| self.err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, FormatError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => MetaValue::U32(self.u32("u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return self.err(format!("bool value {b} is neither 0 nor 1")),
            },
            8 => MetaValue::Str(self.string("string value")?),
            9 => {
                if depth >= MAX_NESTING {
                    return self.err("arrays nested too deeply");
                }
                let et = self.u32("array element type")?;
                let n = self.count("array length")?;
                // Every element takes at least one byte: a cheap size check.
                if n > (self.bytes.len() - self.pos) as u64 {
                    return self.err(format!("array of {n} elements runs past the end of the file"));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64("u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return self.err(format!("unknown metadata value type {other}")),
        })
    }
}

/// Parses the header of a GGUF file (`bytes` is the whole file, or at least
/// its header; tensor data is not read, only bounds-checked when
/// `file_len` is known).
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader, FormatError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(FormatError {
            offset: 0,
            message: format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"),
        });
    }
    let at = c.pos;
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(FormatError {
            offset: at,
            message: format!("GGUF version {version} is not supported (supported: 2, 3)"),
        });
    }
    let n_tensors = c.count("tensor count")?;
    let n_kv = c.count("metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32("metadata value type")?;
        let v = c.value(ty, 0)?;
        metadata.insert(key, v);
    }
    // A tensor's entry takes at least 32 bytes (an empty name's length,
    // rank, one dim, type, offset).
    if n_tensors > (bytes.len() - c.pos) as u64 / 32 {
        return Err(FormatError {
            offset: 8,
            message: format!(
                "tensor count {n_tensors} needs more tensor entries than the {} bytes left hold",
                bytes.len() - c.pos
            ),
        });
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let at = c.pos;
        let n_dims = c.u32("tensor rank")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(FormatError {
                offset: at,
                message: format!("tensor '{name}' has rank {n_dims}"),
            });
        }
        let dims = (0..n_dims)
            .map(|_| c.u64("tensor dim"))
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = c.u32("tensor type")?;
        let offset = c.u64("tensor offset")?;
        let info = TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        };
        if info.numel().is_none() {
            return c.err(format!(
                "tensor '{}' has dims {:?} whose product overflows",
                info.name, info.dims
            ));
        }
        tensors.push(info);
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return c.err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        data_start,
        alignment,
    })
}
