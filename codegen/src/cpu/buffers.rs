//! What values and weights are in memory: f32 for every float dtype, i64 for
//! every integer dtype, bool; weights also in f16/bf16 for the kernels that
//! read them directly.

use half::{bf16, f16};
use optc_ir::{DType, Tensor};
use optc_kernels::cpu::gemm::WeightRef;

/// A buffer of one value.
#[derive(Clone, Debug)]
pub enum Buf {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<bool>),
}

impl Default for Buf {
    fn default() -> Self {
        Buf::F(Vec::new())
    }
}

/// The storage kind of a dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F,
    I,
    B,
}

pub fn kind_of(d: DType) -> Kind {
    if d.is_float() {
        Kind::F
    } else if d == DType::Bool {
        Kind::B
    } else {
        Kind::I
    }
}

impl Buf {
    /// A zeroed buffer of `kind` with `n` elements, or `None` when the
    /// memory cannot be had (a state sized from user input: an error, not
    /// an abort).
    pub fn try_zeroed(kind: Kind, n: usize) -> Option<Buf> {
        fn zeroed<T: Clone + Default>(n: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            v.resize(n, T::default());
            Some(v)
        }
        Some(match kind {
            Kind::F => Buf::F(zeroed(n)?),
            Kind::I => Buf::I(zeroed(n)?),
            Kind::B => Buf::B(zeroed(n)?),
        })
    }

    /// Bytes its elements take (f32, i64 or bool each).
    pub fn bytes(&self) -> usize {
        match self {
            Buf::F(v) => v.len() * 4,
            Buf::I(v) => v.len() * 8,
            Buf::B(v) => v.len(),
        }
    }

    /// A buffer of `kind` with `n` elements, reusing this one's allocation
    /// when it has the kind already.
    pub fn resized(self, kind: Kind, n: usize) -> Buf {
        match (self, kind) {
            (Buf::F(mut v), Kind::F) => {
                v.resize(n, 0.0);
                Buf::F(v)
            }
            (Buf::I(mut v), Kind::I) => {
                v.resize(n, 0);
                Buf::I(v)
            }
            (Buf::B(mut v), Kind::B) => {
                v.resize(n, false);
                Buf::B(v)
            }
            (_, Kind::F) => Buf::F(vec![0.0; n]),
            (_, Kind::I) => Buf::I(vec![0; n]),
            (_, Kind::B) => Buf::B(vec![false; n]),
        }
    }

    /// The buffer's contents of a tensor (which must fit the dtype's kind).
    pub fn from_tensor(t: &Tensor) -> Buf {
        match kind_of(t.dtype()) {
            Kind::F => Buf::F(t.to_f32_vec()),
            Kind::I => Buf::I(t.to_i64_vec()),
            Kind::B => Buf::B(t.to_bool_vec()),
        }
    }

    /// The first `n` elements as a tensor of `dtype` and `shape`.
    pub fn to_tensor(&self, dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        match self {
            Buf::F(v) => Tensor::from_f32(dtype, shape, &v[..n]),
            Buf::I(v) => Tensor::from_i64(dtype, shape, &v[..n]),
            Buf::B(v) => Tensor::from_bool(shape, &v[..n]),
        }
    }
}

/// Rounds f32 values to `dtype` in place (no-op for f32), so a value holds
/// exactly what its declared dtype can.
pub fn round_to(dtype: DType, v: &mut [f32]) {
    match dtype {
        DType::BF16 => {
            for x in v {
                *x = bf16::from_f32(*x).to_f32();
            }
        }
        DType::F16 => {
            for x in v {
                *x = f16::from_f32(*x).to_f32();
            }
        }
        DType::F32 => {}
        d => {
            let t = Tensor::from_f32(d, &[v.len()], v);
            v.copy_from_slice(&t.to_f32_vec());
        }
    }
}

/// A weight in memory.
pub struct Weight {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Half-precision elements, for kernels that read them directly.
    pub half: Option<Half>,
    /// The elements as the buffer kind (f32/i64/bool); for half weights only
    /// when some op needs them that way.
    pub buf: Option<Buf>,
}

pub enum Half {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// int8 blocks with one scale each (`quantize_int8`).
    Q8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        block: usize,
    },
}

impl Weight {
    /// Loads a weight; `need_buf` keeps an f32 (or i64/bool) copy of half
    /// weights too.
    pub fn new(t: &Tensor, need_buf: bool) -> Weight {
        let bytes = || t.to_le_bytes();
        let u16s = |b: Vec<u8>| -> Vec<u16> {
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let half = match t.dtype() {
            DType::F16 => Some(Half::F16(u16s(bytes()).into_iter().map(f16::from_bits).collect())),
            DType::BF16 => Some(Half::BF16(
                u16s(bytes()).into_iter().map(bf16::from_bits).collect(),
            )),
            _ => None,
        };
        let buf = (half.is_none() || need_buf).then(|| Buf::from_tensor(t));
        Weight {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            half,
            buf,
        }
    }

    /// The elements as a matrix operand, in their stored dtype.
    pub fn matrix(&self) -> Option<WeightRef<'_>> {
        match (&self.half, &self.buf) {
            (Some(Half::F16(v)), _) => Some(WeightRef::F16(v)),
            (Some(Half::BF16(v)), _) => Some(WeightRef::BF16(v)),
            (Some(Half::Q8 { q, scales, block }), _) => Some(WeightRef::Q8 {
                q,
                scales,
                block: *block,
            }),
            (None, Some(Buf::F(v))) => Some(WeightRef::F32(v)),
            _ => None,
        }
    }

    /// A weight `[N, K]` held as int8 blocks (`q: [N, K/b, b]`) and their
    /// scales (`[N, K/b, 1]`), as `quantize_int8` writes them.
    pub fn q8(q: &Tensor, scales: &Tensor) -> Result<Weight, String> {
        let (qs, ss) = (q.shape(), scales.shape());
        if q.dtype() != DType::I8 || scales.dtype() != DType::F32 || qs.len() != 3 || ss != [qs[0], qs[1], 1]
        {
            return Err(format!(
                "int8 weights {:?}{qs:?} with scales {:?}{ss:?} are not blocks",
                q.dtype(),
                scales.dtype()
            ));
        }
        Ok(Weight {
            dtype: DType::F32,
            shape: vec![qs[0], qs[1] * qs[2]],
            half: Some(Half::Q8 {
                q: q.to_i64_vec().into_iter().map(|v| v as i8).collect(),
                scales: scales.to_f32_vec(),
                block: qs[2],
            }),
            buf: None,
        })
    }

    /// Bytes the weight occupies in memory (all the forms it is kept in).
    pub fn bytes(&self) -> usize {
        let n: usize = self.shape.iter().product();
        let stored = match &self.half {
            Some(Half::Q8 { scales, .. }) => n + scales.len() * 4,
            Some(_) => n * 2,
            None => 0,
        };
        stored + self.buf.as_ref().map_or(0, Buf::bytes)
    }

    pub fn to_tensor(&self) -> Tensor {
        match (&self.buf, &self.half) {
            (Some(b), _) => b.to_tensor(self.dtype, &self.shape),
            (None, Some(h)) => {
                let v: Vec<f32> = match h {
                    Half::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
                    Half::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
                    Half::Q8 { q, scales, block } => q
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| f32::from(x) * scales[i / block])
                        .collect(),
                };
                Tensor::from_f32(self.dtype, &self.shape, &v)
            }
            (None, None) => Tensor::from_f32(self.dtype, &self.shape, &[]),
        }
    }
}
