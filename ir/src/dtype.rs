//! Element types of IR values.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor: what a value holds and how many bits each
/// element takes in memory. The IR has no implicit promotion: ops that mix
/// types need an explicit `cast`, so every conversion is visible in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    /// IEEE binary64; for imported models that compute in double (ONNX
    /// `DOUBLE`). The interpreter computes in f64, so f64 ops are exact to
    /// one rounding.
    F64,
    F16,
    BF16,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, no infinities (the
    /// `e4m3fn` variant used by Hopper FP8 GEMMs).
    F8E4M3,
    I8,
    /// Unsigned bytes (images, quantised activations).
    U8,
    I16,
    U16,
    U32,
    /// Signed 4-bit integers, two per byte (low nibble first).
    I4,
    /// Unsigned 4-bit integers, two per byte (low nibble first).
    U4,
    I32,
    I64,
    Bool,
}

impl DType {
    /// Every dtype, in a stable order (used by tests and the parser).
    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::I4,
        DType::U4,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// The spelling used by the text form.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    /// Storage size of one element in bits (4 for the packed types).
    pub fn bits(self) -> usize {
        match self {
            DType::F64 => 64,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::F8E4M3 | DType::I8 | DType::U8 | DType::Bool => 8,
            DType::I4 | DType::U4 => 4,
            DType::I64 => 64,
        }
    }

    /// Bytes needed to store `numel` elements of this type.
    pub fn storage_bytes(self, numel: usize) -> usize {
        (numel * self.bits()).div_ceil(8)
    }

    /// Floating-point types, on which transcendental ops are defined.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::F8E4M3
        )
    }

    /// Integer types (signed or unsigned, packed or not), excluding bool.
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::U32
                | DType::I4
                | DType::U4
                | DType::I32
                | DType::I64
        )
    }

    /// Types usable as gather/embedding indices.
    pub fn is_index(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL.iter().copied().find(|d| d.name() == s).ok_or_else(|| {
            let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
            format!("unknown dtype '{s}' (expected one of {})", names.join(", "))
        })
    }
}

/// Conversions for `f8e4m3` (e4m3fn: bias 7, no infinities, one NaN pattern
/// per sign). Encoding rounds to nearest, ties to even, and saturates values
/// beyond ±448 to ±448 (ONNX `Cast` with `saturate = 1`).
pub mod f8e4m3 {
    /// Largest finite magnitude.
    pub const MAX: f32 = 448.0;

    /// Decodes one byte.
    pub fn to_f32(byte: u8) -> f32 {
        let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
        let exp = ((byte >> 3) & 0x0f) as i32;
        let man = (byte & 0x07) as f32;
        if exp == 0x0f && (byte & 0x07) == 0x07 {
            return f32::NAN;
        }
        let mag = if exp == 0 {
            man / 8.0 * 2f32.powi(-6)
        } else {
            (1.0 + man / 8.0) * 2f32.powi(exp - 7)
        };
        sign * mag
    }

    /// Encodes one value (round to nearest even, saturating).
    pub fn from_f32(x: f32) -> u8 {
        from_f64(x as f64)
    }

    /// Encodes one value with a single rounding from f64.
    pub fn from_f64(x: f64) -> u8 {
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        if x.is_nan() {
            return sign | 0x7f;
        }
        let a = x.abs();
        if a >= MAX as f64 {
            return sign | 0x7e;
        }
        // Codes 0..=0x7e are the non-negative finite values in increasing order,
        // so the nearest one is found by binary search over the code space.
        let (mut lo, mut hi) = (0u8, 0x7eu8);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if to_f32(mid) as f64 <= a {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (vlo, vhi) = (to_f32(lo) as f64, to_f32(hi) as f64);
        let code = if a - vlo < vhi - a {
            lo
        } else if a - vlo > vhi - a {
            hi
        } else if lo % 2 == 0 {
            lo
        } else {
            hi
        };
        sign | code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f128"
            .parse::<DType>()
            .unwrap_err()
            .contains("unknown dtype 'f128'"));
    }

    #[test]
    fn f8e4m3_known_values() {
        assert_eq!(f8e4m3::to_f32(0x7e), 448.0);
        assert_eq!(f8e4m3::to_f32(0x38), 1.0);
        assert_eq!(f8e4m3::to_f32(0x01), 2f32.powi(-9));
        assert!(f8e4m3::to_f32(0x7f).is_nan());
        assert_eq!(f8e4m3::from_f32(1.0), 0x38);
        assert_eq!(f8e4m3::from_f32(-448.0), 0xfe);
        assert_eq!(f8e4m3::from_f32(1e6), 0x7e);
        assert_eq!(f8e4m3::from_f32(f32::NEG_INFINITY), 0xfe);
        // 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39): ties to even.
        assert_eq!(f8e4m3::from_f32(1.0625), 0x38);
        for code in 0u8..0x7f {
            assert_eq!(f8e4m3::from_f32(f8e4m3::to_f32(code)), code);
        }
    }
}
