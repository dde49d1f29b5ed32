//! Concrete tensors: what the interpreter computes on and the weight store
//! hands out.

use std::fmt;

use half::{bf16, f16};

use crate::dtype::DType;

/// Element storage, one variant per dtype, so a tensor keeps exactly the
/// values it was given (a bf16 weight stays bf16 until something casts it).
#[derive(Clone)]
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// 8-bit small-float codes (every f8 format; the tensor's dtype says
    /// which).
    Codes(Vec<u8>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    /// Packed two per byte, low nibble first (i4, u4 and f4e2m1 codes);
    /// `numel` is on the tensor.
    Nibbles(Vec<u8>),
    /// Packed four per byte, lowest bits first (i2, u2).
    Crumbs(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A dense, row-major tensor with a concrete shape.
#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

/// Error for byte buffers whose length does not fit the shape and dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dtype}{shape:?} needs {expected} bytes but {found} were given")]
pub struct SizeError {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub expected: usize,
    pub found: usize,
}

/// Unpacks `n` fields of `width` bits (4 or 2), lowest bits first,
/// sign-extending when `signed`.
fn unpack(bytes: &[u8], n: usize, width: usize, signed: bool) -> Vec<i64> {
    let per = 8 / width;
    let mask = (1u8 << width) - 1;
    (0..n)
        .map(|i| {
            let f = (bytes[i / per] >> ((i % per) * width)) & mask;
            if signed && f >= 1 << (width - 1) {
                f as i64 - (1 << width)
            } else {
                f as i64
            }
        })
        .collect()
}

/// Packs `n` values into fields of `width` bits (their low bits).
fn pack(values: impl Iterator<Item = i64>, n: usize, width: usize) -> Vec<u8> {
    let per = 8 / width;
    let mask = (1u8 << width) - 1;
    let mut out = vec![0u8; n.div_ceil(per)];
    for (i, v) in values.enumerate() {
        out[i / per] |= ((v as u8) & mask) << ((i % per) * width);
    }
    out
}

/// Encodes floats into a small-float dtype's storage.
fn small_float_data(dtype: DType, values: impl Iterator<Item = f64>, n: usize) -> Option<Data> {
    let f = dtype.small_float()?;
    let codes = values.map(|v| f.from_f64(v));
    Some(if f.bits == 4 {
        Data::Nibbles(pack(codes.map(i64::from), n, 4))
    } else {
        Data::Codes(codes.collect())
    })
}

/// f64 to f32 rounding to odd (truncate, then set the last bit if anything
/// was lost). Rounding that result to nearest-even in a format with at least
/// two fewer mantissa bits (f16, bf16) equals rounding the f64 once, which
/// `half`'s own f64 conversions do not guarantee.
fn round_to_odd_f32(x: f64) -> f32 {
    let mut y = x as f32;
    if y.is_nan() || (y as f64) == x {
        return y;
    }
    if (y as f64).abs() > x.abs() {
        // Rounded away from zero: step one ulp back toward zero.
        y = f32::from_bits(y.to_bits() - 1);
    }
    f32::from_bits(y.to_bits() | 1)
}

/// Float to u64 like [`float_to_int`]: truncation, saturating at 0 and
/// `u64::MAX`, NaN to 0.
fn float_to_u64(x: f64) -> u64 {
    if x.is_nan() {
        0
    } else {
        x.trunc().clamp(0.0, u64::MAX as f64) as u64
    }
}

/// Float to integer conversion used by casts: truncation toward zero,
/// saturating at the type's bounds, NaN to 0.
fn float_to_int(x: f64, dtype: DType) -> i64 {
    let (lo, hi) = int_range(dtype);
    if x.is_nan() {
        0
    } else {
        (x.trunc().clamp(lo as f64, hi as f64)) as i64
    }
}

/// The smallest and largest value of an integer dtype.
pub fn int_range(dtype: DType) -> (i64, i64) {
    match dtype {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::U32 => (0, u32::MAX as i64),
        DType::I2 => (-2, 1),
        DType::U2 => (0, 3),
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

impl Tensor {
    /// Builds a tensor from f32 values, rounding each to `dtype` (floats:
    /// round to nearest even; integers: truncate and saturate; bool: != 0).
    pub fn from_f32(dtype: DType, shape: &[usize], values: &[f32]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape/data length");
        let data = match dtype {
            DType::F32 => Data::F32(values.to_vec()),
            DType::F64 => Data::F64(values.iter().map(|&v| v as f64).collect()),
            DType::F16 => Data::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => Data::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::Bool => Data::Bool(values.iter().map(|&v| v != 0.0).collect()),
            DType::U64 => Data::U64(values.iter().map(|&v| float_to_u64(v as f64)).collect()),
            d if d.small_float().is_some() => {
                small_float_data(d, values.iter().map(|&v| v as f64), values.len()).expect("small float")
            }
            _ => {
                let ints: Vec<i64> = values.iter().map(|&v| float_to_int(v as f64, dtype)).collect();
                return Tensor::from_i64(dtype, shape, &ints);
            }
        };
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Builds a tensor from f64 values, rounded once, straight to `dtype`
    /// (no intermediate f32 step for f16/bf16/f8).
    pub fn from_f64(dtype: DType, shape: &[usize], values: &[f64]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape/data length");
        let data = match dtype {
            DType::F32 => Data::F32(values.iter().map(|&v| v as f32).collect()),
            DType::F64 => Data::F64(values.to_vec()),
            DType::F16 => Data::F16(
                values
                    .iter()
                    .map(|&v| f16::from_f32(round_to_odd_f32(v)))
                    .collect(),
            ),
            DType::BF16 => Data::BF16(
                values
                    .iter()
                    .map(|&v| bf16::from_f32(round_to_odd_f32(v)))
                    .collect(),
            ),
            DType::Bool => Data::Bool(values.iter().map(|&v| v != 0.0).collect()),
            DType::U64 => Data::U64(values.iter().map(|&v| float_to_u64(v)).collect()),
            d if d.small_float().is_some() => {
                small_float_data(d, values.iter().copied(), values.len()).expect("small float")
            }
            _ => {
                let v: Vec<i64> = values.iter().map(|&x| float_to_int(x, dtype)).collect();
                return Tensor::from_i64(dtype, shape, &v);
            }
        };
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Builds a tensor from integer values (wrapping to the integer type's
    /// width, converted exactly or rounded for float types).
    pub fn from_i64(dtype: DType, shape: &[usize], values: &[i64]) -> Tensor {
        let n: usize = shape.iter().product();
        assert_eq!(n, values.len(), "shape/data length");
        let data = match dtype {
            DType::I8 => Data::I8(values.iter().map(|&v| v as i8).collect()),
            DType::U8 => Data::U8(values.iter().map(|&v| v as u8).collect()),
            DType::I16 => Data::I16(values.iter().map(|&v| v as i16).collect()),
            DType::U16 => Data::U16(values.iter().map(|&v| v as u16).collect()),
            DType::U32 => Data::U32(values.iter().map(|&v| v as u32).collect()),
            DType::I32 => Data::I32(values.iter().map(|&v| v as i32).collect()),
            DType::I64 => Data::I64(values.to_vec()),
            DType::U64 => Data::U64(values.iter().map(|&v| v as u64).collect()),
            DType::I4 | DType::U4 => Data::Nibbles(pack(values.iter().copied(), n, 4)),
            DType::I2 | DType::U2 => Data::Crumbs(pack(values.iter().copied(), n, 2)),
            DType::Bool => Data::Bool(values.iter().map(|&v| v != 0).collect()),
            // `as f32` rounds an i64 once; the narrower floats go through f64,
            // which is exact below 2^53 (beyond it, two roundings).
            DType::F32 => Data::F32(values.iter().map(|&v| v as f32).collect()),
            _ => {
                let f: Vec<f64> = values.iter().map(|&v| v as f64).collect();
                return Tensor::from_f64(dtype, shape, &f);
            }
        };
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Builds a bool tensor.
    pub fn from_bool(shape: &[usize], values: &[bool]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape/data length");
        Tensor {
            dtype: DType::Bool,
            shape: shape.to_vec(),
            data: Data::Bool(values.to_vec()),
        }
    }

    /// A scalar (rank 0) f32 tensor.
    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::from_f32(DType::F32, &[], &[v])
    }

    /// Decodes little-endian bytes (the safetensors layout).
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, SizeError> {
        let n: usize = shape.iter().product();
        let expected = dtype.storage_bytes(n);
        if bytes.len() != expected {
            return Err(SizeError {
                dtype,
                shape: shape.to_vec(),
                expected,
                found: bytes.len(),
            });
        }
        macro_rules! chunks {
            ($t:ty, $k:expr) => {
                bytes
                    .chunks_exact($k)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                    .collect()
            };
        }
        let data = match dtype {
            DType::F32 => Data::F32(chunks!(f32, 4)),
            DType::F64 => Data::F64(chunks!(f64, 8)),
            DType::F16 => Data::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => Data::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E4M3Fnuz | DType::F8E5M2Fnuz | DType::F8E8M0 => {
                Data::Codes(bytes.to_vec())
            }
            DType::I8 => Data::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => Data::U8(bytes.to_vec()),
            DType::I16 => Data::I16(chunks!(i16, 2)),
            DType::U16 => Data::U16(chunks!(u16, 2)),
            DType::U32 => Data::U32(chunks!(u32, 4)),
            DType::U64 => Data::U64(chunks!(u64, 8)),
            DType::I4 | DType::U4 | DType::F4E2M1 => Data::Nibbles(bytes.to_vec()),
            DType::I2 | DType::U2 => Data::Crumbs(bytes.to_vec()),
            DType::I32 => Data::I32(chunks!(i32, 4)),
            DType::I64 => Data::I64(chunks!(i64, 8)),
            DType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        };
        Ok(Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        })
    }

    /// Little-endian bytes (the safetensors layout).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn le<const N: usize, T: Copy>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        match &self.data {
            Data::F32(v) => le(v, f32::to_le_bytes),
            Data::F64(v) => le(v, f64::to_le_bytes),
            Data::U8(v) => v.clone(),
            Data::I16(v) => le(v, i16::to_le_bytes),
            Data::U16(v) => le(v, u16::to_le_bytes),
            Data::U32(v) => le(v, u32::to_le_bytes),
            Data::F16(v) => le(v, f16::to_le_bytes),
            Data::BF16(v) => le(v, bf16::to_le_bytes),
            Data::U64(v) => le(v, u64::to_le_bytes),
            Data::Codes(v) | Data::Nibbles(v) | Data::Crumbs(v) => v.clone(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::I32(v) => le(v, i32::to_le_bytes),
            Data::I64(v) => le(v, i64::to_le_bytes),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Every element widened to f32 (exact for every dtype but i32/i64
    /// beyond 2^24).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as u8 as f32).collect(),
            Data::U64(v) => v.iter().map(|&x| x as f32).collect(),
            _ if self.dtype.small_float().is_some() => {
                self.to_f64_vec().into_iter().map(|x| x as f32).collect()
            }
            _ => self.to_i64_vec().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Every element widened to f64 (exact for floats and for integers up to 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F64(v) => v.clone(),
            Data::U64(v) => v.iter().map(|&x| x as f64).collect(),
            _ if self.dtype.small_float().is_some() => {
                let f = self.dtype.small_float().expect("small float");
                self.codes().into_iter().map(|c| f.to_f64(c)).collect()
            }
            Data::I8(_)
            | Data::U8(_)
            | Data::I16(_)
            | Data::U16(_)
            | Data::U32(_)
            | Data::Nibbles(_)
            | Data::Crumbs(_)
            | Data::I32(_)
            | Data::I64(_) => self.to_i64_vec().into_iter().map(|x| x as f64).collect(),
            _ => self.to_f32_vec().into_iter().map(f64::from).collect(),
        }
    }

    /// Every element as i64 (floats truncate toward zero and saturate).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        let n = self.numel();
        match &self.data {
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
            // u64 values at or above 2^63 wrap (the bit pattern is kept).
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Nibbles(v) if self.dtype.is_int() => unpack(v, n, 4, self.dtype == DType::I4),
            Data::Crumbs(v) => unpack(v, n, 2, self.dtype == DType::I2),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => self
                .to_f64_vec()
                .into_iter()
                .map(|x| float_to_int(x, DType::I64))
                .collect(),
        }
    }

    /// Every element as bool (non-zero is true).
    pub fn to_bool_vec(&self) -> Vec<bool> {
        match &self.data {
            Data::Bool(v) => v.clone(),
            _ => self.to_f64_vec().into_iter().map(|x| x != 0.0).collect(),
        }
    }

    /// The tensor converted to another dtype, with the rounding rules of
    /// [`Tensor::from_f32`] (integer to integer conversions are exact when the
    /// value fits and wrap otherwise, like a C cast).
    pub fn cast(&self, to: DType) -> Tensor {
        if to == self.dtype {
            return self.clone();
        }
        if self.dtype == DType::U64 {
            return match to {
                _ if to.is_float() => Tensor::from_f64(to, &self.shape, &self.to_f64_vec()),
                _ => Tensor::from_i64(to, &self.shape, &self.to_i64_vec()),
            };
        }
        if self.dtype.is_int() || self.dtype == DType::Bool {
            return Tensor::from_i64(to, &self.shape, &self.to_i64_vec());
        }
        // f64 values go straight to the target (one rounding); the other
        // floats are exact in f64 too, so this is one rounding for all.
        Tensor::from_f64(to, &self.shape, &self.to_f64_vec())
    }

    /// Same data, new shape (same element count).
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape element count"
        );
        Tensor {
            dtype: self.dtype,
            shape: shape.to_vec(),
            data: self.data.clone(),
        }
    }

    /// Picks elements by flat index (used by every data-movement op).
    pub fn take_flat(&self, shape: &[usize], index: &[usize]) -> Tensor {
        macro_rules! pick {
            ($v:expr) => {
                index.iter().map(|&i| $v[i]).collect()
            };
        }
        let data = match &self.data {
            Data::F32(v) => Data::F32(pick!(v)),
            Data::F64(v) => Data::F64(pick!(v)),
            Data::U8(v) => Data::U8(pick!(v)),
            Data::I16(v) => Data::I16(pick!(v)),
            Data::U16(v) => Data::U16(pick!(v)),
            Data::U32(v) => Data::U32(pick!(v)),
            Data::U64(v) => Data::U64(pick!(v)),
            Data::F16(v) => Data::F16(pick!(v)),
            Data::BF16(v) => Data::BF16(pick!(v)),
            Data::Codes(v) => Data::Codes(pick!(v)),
            Data::I8(v) => Data::I8(pick!(v)),
            Data::I32(v) => Data::I32(pick!(v)),
            Data::I64(v) => Data::I64(pick!(v)),
            Data::Bool(v) => Data::Bool(pick!(v)),
            Data::Nibbles(_) | Data::Crumbs(_) => {
                let width = self.dtype.bits();
                let all = self.fields();
                let picked = index.iter().map(|&i| all[i]);
                let packed = pack(picked, index.len(), width);
                return Tensor {
                    dtype: self.dtype,
                    shape: shape.to_vec(),
                    data: if width == 4 {
                        Data::Nibbles(packed)
                    } else {
                        Data::Crumbs(packed)
                    },
                };
            }
        };
        Tensor {
            dtype: self.dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// The elements of tensors of one dtype, one after another, as a 1-D
    /// tensor (the source that data-movement ops pick from).
    pub fn join_flat(parts: &[&Tensor]) -> Tensor {
        let dtype = parts.first().map_or(DType::F32, |t| t.dtype);
        let n: usize = parts.iter().map(|t| t.numel()).sum();
        if dtype.bits() < 8 {
            let v: Vec<i64> = parts.iter().flat_map(|t| t.fields()).collect();
            let packed = pack(v.into_iter(), n, dtype.bits());
            return Tensor::from_le_bytes(dtype, &[n], &packed).expect("packed size");
        }
        if dtype == DType::F32 {
            let mut v = Vec::with_capacity(n);
            for t in parts {
                match &t.data {
                    Data::F32(x) => v.extend_from_slice(x),
                    _ => v.extend(t.to_f32_vec()),
                }
            }
            return Tensor::from_f32(dtype, &[n], &v);
        }
        let mut bytes = Vec::new();
        for t in parts {
            bytes.extend(t.to_le_bytes());
        }
        Tensor::from_le_bytes(dtype, &[n], &bytes).expect("parts share one dtype")
    }

    /// The raw code of every element of a small-float tensor (empty for
    /// other dtypes).
    fn codes(&self) -> Vec<u8> {
        match &self.data {
            Data::Codes(v) => v.clone(),
            Data::Nibbles(v) => unpack(v, self.numel(), 4, false)
                .into_iter()
                .map(|c| c as u8)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The unsigned bit fields of a packed (sub-byte) tensor.
    fn fields(&self) -> Vec<i64> {
        match &self.data {
            Data::Nibbles(v) => unpack(v, self.numel(), 4, false),
            Data::Crumbs(v) => unpack(v, self.numel(), 2, false),
            _ => self.to_i64_vec(),
        }
    }

    /// Every element of a u64 tensor as u64 (other integer dtypes: their
    /// i64 value reinterpreted), for the unsigned 64-bit arithmetic of the
    /// elementwise ops.
    pub fn to_u64_vec(&self) -> Vec<u64> {
        match &self.data {
            Data::U64(v) => v.clone(),
            _ => self.to_i64_vec().into_iter().map(|x| x as u64).collect(),
        }
    }

    /// Builds a u64 tensor.
    pub fn from_u64(shape: &[usize], values: &[u64]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape/data length");
        Tensor {
            dtype: DType::U64,
            shape: shape.to_vec(),
            data: Data::U64(values.to_vec()),
        }
    }

    /// Largest absolute difference to another tensor of the same shape, in f64.
    pub fn max_abs_diff(&self, other: &Tensor) -> f64 {
        self.to_f64_vec()
            .iter()
            .zip(other.to_f64_vec())
            .map(|(a, b)| if a == &b { 0.0 } else { (a - b).abs() })
            .fold(0.0, f64::max)
    }
}

impl PartialEq for Tensor {
    /// Bitwise equality (so a NaN constant equals itself).
    fn eq(&self, o: &Tensor) -> bool {
        self.dtype == o.dtype && self.shape == o.shape && self.to_le_bytes() == o.to_le_bytes()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)?;
        let n = self.numel();
        if self.dtype.is_float() {
            let v = self.to_f32_vec();
            write!(f, " {:?}", &v[..n.min(16)])?;
        } else {
            let v = self.to_i64_vec();
            write!(f, " {:?}", &v[..n.min(16)])?;
        }
        if n > 16 {
            write!(f, " …")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_nibbles_round_trip() {
        let t = Tensor::from_i64(DType::I4, &[3], &[-8, 7, -1]);
        assert_eq!(t.to_le_bytes(), vec![0x78, 0x0f]);
        assert_eq!(t.to_i64_vec(), vec![-8, 7, -1]);
        let u = Tensor::from_le_bytes(DType::U4, &[3], &[0x78, 0x0f]).unwrap();
        assert_eq!(u.to_i64_vec(), vec![8, 7, 15]);
    }

    #[test]
    fn f64_rounds_once_to_half_types() {
        // exp(0.0226898193359375) lies just below an f16 rounding midpoint;
        // rounding through f32 first would land on the midpoint and go up.
        let x = 1.0229491912726614f64;
        let t = Tensor::from_f64(DType::F16, &[1], &[x]);
        assert_eq!(t.to_f32_vec(), vec![1.0 + 23.0 / 1024.0]);
        // Just above a bf16 midpoint by less than f32 precision: must go up.
        let mid = 1.0 + 2f64.powi(-8);
        let t = Tensor::from_f64(DType::BF16, &[2], &[mid + 2f64.powi(-40), mid]);
        assert_eq!(t.to_f32_vec(), vec![1.0 + 2f32.powi(-7), 1.0]);
    }

    #[test]
    fn casts_round_and_saturate() {
        let t = Tensor::from_f32(DType::F32, &[4], &[1.5, -2.7, 1e10, f32::NAN]);
        assert_eq!(t.cast(DType::I32).to_i64_vec(), vec![1, -2, i32::MAX as i64, 0]);
        assert_eq!(t.cast(DType::Bool).to_i64_vec(), vec![1, 1, 1, 1]);
        let b = Tensor::from_f32(DType::F32, &[1], &[1.0 + 2f32.powi(-8)]).cast(DType::BF16);
        assert_eq!(b.to_f32_vec(), vec![1.0]);
        assert!(Tensor::from_le_bytes(DType::F32, &[2], &[0; 7]).is_err());
    }
}
