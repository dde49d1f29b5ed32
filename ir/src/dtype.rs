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
    /// 8-bit float, 5 exponent bits, 2 mantissa bits, with infinities (IEEE
    /// style; FP8 KV caches and gradients).
    F8E5M2,
    /// `e4m3fnuz`: no infinities, no negative zero, NaN is `0x80`, bias 8
    /// (AMD MI300 FP8).
    F8E4M3Fnuz,
    /// `e5m2fnuz`: like `e4m3fnuz` with 5 exponent bits, bias 16.
    F8E5M2Fnuz,
    /// `e8m0`: an unsigned power of two `2^(code − 127)`, `0xff` is NaN (the
    /// shared scale of MX block formats).
    F8E8M0,
    /// `e2m1`: 4-bit float, two per byte (low nibble first), no infinities or
    /// NaN, magnitudes 0 … 6 (MXFP4/NVFP4 elements).
    F4E2M1,
    I8,
    /// Unsigned bytes (images, quantised activations).
    U8,
    I16,
    U16,
    U32,
    /// Unsigned 64-bit integers. Elementwise, comparison and cast ops treat
    /// them as unsigned over the whole range; index-like uses read them as
    /// i64.
    U64,
    /// Signed 2-bit integers, four per byte (lowest bits first).
    I2,
    /// Unsigned 2-bit integers, four per byte (lowest bits first).
    U2,
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
    pub const ALL: [DType; 23] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::F8E4M3Fnuz,
        DType::F8E5M2Fnuz,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I2,
        DType::U2,
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
            DType::F8E5M2 => "f8e5m2",
            DType::F8E4M3Fnuz => "f8e4m3fnuz",
            DType::F8E5M2Fnuz => "f8e5m2fnuz",
            DType::F8E8M0 => "f8e8m0",
            DType::F4E2M1 => "f4e2m1",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::I2 => "i2",
            DType::U2 => "u2",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    /// Storage size of one element in bits (4 or 2 for the packed types).
    pub fn bits(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 64,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::F8E4M3
            | DType::F8E5M2
            | DType::F8E4M3Fnuz
            | DType::F8E5M2Fnuz
            | DType::F8E8M0
            | DType::I8
            | DType::U8
            | DType::Bool => 8,
            DType::I4 | DType::U4 | DType::F4E2M1 => 4,
            DType::I2 | DType::U2 => 2,
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
            DType::F32
                | DType::F64
                | DType::F16
                | DType::BF16
                | DType::F8E4M3
                | DType::F8E5M2
                | DType::F8E4M3Fnuz
                | DType::F8E5M2Fnuz
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }

    /// The small floats stored as codes (8-bit, or 4-bit packed), decoded
    /// and encoded through [`SmallFloat`].
    pub fn small_float(self) -> Option<SmallFloat> {
        Some(match self {
            DType::F8E4M3 => SmallFloat::E4M3FN,
            DType::F8E5M2 => SmallFloat::E5M2,
            DType::F8E4M3Fnuz => SmallFloat::E4M3FNUZ,
            DType::F8E5M2Fnuz => SmallFloat::E5M2FNUZ,
            DType::F8E8M0 => SmallFloat::E8M0,
            DType::F4E2M1 => SmallFloat::E2M1,
            _ => return None,
        })
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
                | DType::U64
                | DType::I2
                | DType::U2
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

/// How a small float spends its special codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specials {
    /// IEEE style: the top exponent holds ±inf (mantissa 0) and NaNs.
    Ieee,
    /// "fn": no infinities; only the all-ones code (per sign) is NaN.
    Fn,
    /// "fnuz": no infinities, no negative zero; `0x80` is the one NaN.
    Fnuz,
    /// No infinities and no NaN at all (e2m1).
    None,
}

/// One small floating-point format (8 or 4 bits, sign bit on top), with a
/// codec that rounds once to nearest, ties to even. Overflow saturates to
/// the largest finite value, infinities included, and NaN stays NaN where
/// the format has one (ONNX `Cast` with `saturate = 1`; non-saturating casts
/// are built from this plus a compare against [`SmallFloat::overflow_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallFloat {
    pub bits: u32,
    pub exp_bits: u32,
    pub man_bits: u32,
    pub bias: i32,
    pub specials: Specials,
}

impl SmallFloat {
    pub const E4M3FN: SmallFloat = SmallFloat::new(8, 4, 3, 7, Specials::Fn);
    pub const E5M2: SmallFloat = SmallFloat::new(8, 5, 2, 15, Specials::Ieee);
    pub const E4M3FNUZ: SmallFloat = SmallFloat::new(8, 4, 3, 8, Specials::Fnuz);
    pub const E5M2FNUZ: SmallFloat = SmallFloat::new(8, 5, 2, 16, Specials::Fnuz);
    pub const E2M1: SmallFloat = SmallFloat::new(4, 2, 1, 1, Specials::None);
    /// e8m0 is unsigned and has no mantissa; its codec is special-cased.
    pub const E8M0: SmallFloat = SmallFloat::new(8, 8, 0, 127, Specials::Fn);

    const fn new(bits: u32, exp_bits: u32, man_bits: u32, bias: i32, specials: Specials) -> SmallFloat {
        SmallFloat {
            bits,
            exp_bits,
            man_bits,
            bias,
            specials,
        }
    }

    fn is_e8m0(self) -> bool {
        self.man_bits == 0
    }

    fn sign_bit(self) -> u8 {
        1 << (self.bits - 1)
    }

    /// The code of the largest finite positive value.
    pub fn max_code(self) -> u8 {
        let all = self.sign_bit() - 1;
        match self.specials {
            _ if self.is_e8m0() => 0xfe,
            Specials::Ieee => all - (1 << self.man_bits) as u8,
            Specials::Fn => all - 1,
            Specials::Fnuz | Specials::None => all,
        }
    }

    /// The largest finite value.
    pub fn max(self) -> f64 {
        self.to_f64(self.max_code())
    }

    /// A NaN code, or `None` for e2m1.
    pub fn nan_code(self) -> Option<u8> {
        match self.specials {
            _ if self.is_e8m0() => Some(0xff),
            Specials::Ieee | Specials::Fn => Some(self.sign_bit() - 1),
            Specials::Fnuz => Some(0x80),
            Specials::None => None,
        }
    }

    /// Decodes one code (the low `bits` bits of `code`).
    pub fn to_f64(self, code: u8) -> f64 {
        if self.is_e8m0() {
            return if code == 0xff {
                f64::NAN
            } else {
                2f64.powi(code as i32 - 127)
            };
        }
        let code = if self.bits == 8 { code } else { code & 0x0f };
        let sign_bit = self.sign_bit();
        let mag_code = code & (sign_bit - 1);
        let exp = (mag_code >> self.man_bits) as i32;
        let man = (mag_code & ((1u8 << self.man_bits) - 1)) as f64;
        let top_exp = (1 << self.exp_bits) - 1;
        match self.specials {
            Specials::Fnuz if code == 0x80 => return f64::NAN,
            Specials::Fn if mag_code == sign_bit - 1 => return f64::NAN,
            Specials::Ieee if exp == top_exp => {
                return if man == 0.0 {
                    if code & sign_bit != 0 {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    }
                } else {
                    f64::NAN
                }
            }
            _ => {}
        }
        let scale = (1u32 << self.man_bits) as f64;
        let mag = if exp == 0 {
            man / scale * 2f64.powi(1 - self.bias)
        } else {
            (1.0 + man / scale) * 2f64.powi(exp - self.bias)
        };
        if code & sign_bit != 0 {
            -mag
        } else {
            mag
        }
    }

    /// Encodes one value: round to nearest even, saturating (see the type
    /// doc). e8m0 takes the exponent of the value's f32 form and rounds up
    /// when any mantissa bit is set (ONNX's default `round_mode = "up"`).
    pub fn from_f64(self, x: f64) -> u8 {
        if self.is_e8m0() {
            let bits = (x as f32).to_bits();
            let exp = (bits >> 23) & 0xff;
            if exp == 0xff {
                return 0xff;
            }
            let up = (bits & 0x7f_ffff) != 0 && exp < 0xfe;
            return (exp + u32::from(up)) as u8;
        }
        let neg = x.is_sign_negative();
        if x.is_nan() {
            return match self.specials {
                Specials::None => 0,
                Specials::Fnuz => 0x80,
                _ => self.nan_code().unwrap_or(0) | if neg { self.sign_bit() } else { 0 },
            };
        }
        let a = x.abs();
        let max_code = self.max_code();
        let code = if a >= self.max() {
            max_code
        } else {
            // Codes 0..=max are the non-negative finite values in increasing
            // order, so the nearest one is found by binary search.
            let (mut lo, mut hi) = (0u8, max_code);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.to_f64(mid) <= a {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let (vlo, vhi) = (self.to_f64(lo), self.to_f64(hi));
            if a - vlo < vhi - a || (a - vlo == vhi - a && lo % 2 == 0) {
                lo
            } else {
                hi
            }
        };
        // fnuz has no negative zero: -0 (or a tiny negative) is +0.
        if neg && !(code == 0 && self.specials == Specials::Fnuz) {
            code | self.sign_bit()
        } else {
            code
        }
    }

    /// The magnitude from which a non-saturating cast overflows: values
    /// whose magnitude is above it (or equal, when the tie rounds up) round
    /// past the largest finite value. Returns `(bound, ties_overflow)`.
    pub fn overflow_bound(self) -> (f64, bool) {
        let max_code = self.max_code();
        let max = self.max();
        let below = self.to_f64(max_code - 1);
        // The next code would sit one step above `max` (same binade).
        (max + (max - below) / 2.0, max_code % 2 == 1)
    }
}

/// Conversions for `f8e4m3` (e4m3fn: bias 7, no infinities, one NaN pattern
/// per sign). Encoding rounds to nearest, ties to even, and saturates values
/// beyond ±448 to ±448 (ONNX `Cast` with `saturate = 1`).
pub mod f8e4m3 {
    use super::SmallFloat;

    /// Largest finite magnitude.
    pub const MAX: f32 = 448.0;

    /// Decodes one byte.
    pub fn to_f32(byte: u8) -> f32 {
        SmallFloat::E4M3FN.to_f64(byte) as f32
    }

    /// Encodes one value (round to nearest even, saturating).
    pub fn from_f32(x: f32) -> u8 {
        from_f64(x as f64)
    }

    /// Encodes one value with a single rounding from f64.
    pub fn from_f64(x: f64) -> u8 {
        SmallFloat::E4M3FN.from_f64(x)
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

    #[test]
    fn small_float_known_values() {
        let (e5, nuz4, nuz5, e2, e8) = (
            SmallFloat::E5M2,
            SmallFloat::E4M3FNUZ,
            SmallFloat::E5M2FNUZ,
            SmallFloat::E2M1,
            SmallFloat::E8M0,
        );
        assert_eq!(e5.max(), 57344.0);
        assert_eq!(nuz4.max(), 240.0);
        assert_eq!(nuz5.max(), 57344.0);
        assert_eq!(e2.max(), 6.0);
        assert_eq!(e5.to_f64(0x7c), f64::INFINITY);
        assert!(e5.to_f64(0x7e).is_nan());
        assert!(nuz4.to_f64(0x80).is_nan());
        assert_eq!(e5.from_f64(f64::INFINITY), 0x7b);
        assert_eq!(nuz4.from_f64(-1e-9), 0);
        assert_eq!(nuz4.from_f64(f64::NAN), 0x80);
        assert_eq!(e2.from_f64(-3.5), 0x8 | 0x6);
        assert_eq!(e2.to_f64(0x1), 0.5);
        assert_eq!(e8.from_f64(1.1), 128);
        assert_eq!(e8.from_f64(0.0), 0);
        assert_eq!(e8.to_f64(127), 1.0);
        for f in [e5, nuz4, nuz5, e2, SmallFloat::E4M3FN] {
            for code in 0..=f.max_code() {
                assert_eq!(f.from_f64(f.to_f64(code)), code, "{f:?} {code:#x}");
            }
        }
        // Non-saturating bounds: e4m3fn ties at 464 round to 448 (even code),
        // e5m2 ties at 61440 round up to inf.
        assert_eq!(SmallFloat::E4M3FN.overflow_bound(), (464.0, false));
        assert_eq!(e5.overflow_bound(), (61440.0, true));
    }
}
