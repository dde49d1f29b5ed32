//! ggml tensor encodings and their dequantisation to f32: F32, F16, BF16,
//! and the block formats Q8_0, Q4_0, Q4_1 (32 values a block) and Q4_K,
//! Q6_K (256-value super-blocks), bit-for-bit as ggml lays them out.

use half::{bf16, f16};

/// A ggml type this reader can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

/// ggml's names for its type codes (for error messages).
pub fn type_name(code: u32) -> String {
    let name = match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        _ => return format!("type {code}"),
    };
    name.to_string()
}

impl GgmlType {
    /// The supported types, by name, for error messages.
    pub const SUPPORTED: &'static str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";

    pub fn from_code(code: u32) -> Option<GgmlType> {
        Some(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
        }
    }

    /// Bytes for `n` values; `None` if `n` is not a whole number of blocks
    /// or the byte count does not fit in a `u64` (a corrupt shape).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (per, size) = self.block();
        if n % per as u64 != 0 {
            return None;
        }
        (n / per as u64).checked_mul(size as u64)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K's packed 6-bit scale and min for sub-block `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4k_block(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (g, chunk) in y.chunks_mut(64).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        for l in 0..32 {
            chunk[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            chunk[32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q6k_block(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Decodes `n` values of type `t` from `bytes` (exactly `t.bytes_for(n)` long).
pub fn dequantize(t: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    let (per, size) = t.block();
    for (blk, out) in bytes.chunks_exact(size).zip(y.chunks_mut(per)) {
        match t {
            GgmlType::F32 => out[0] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
            GgmlType::F16 => out[0] = half_at(blk, 0),
            GgmlType::BF16 => out[0] = bf16::from_le_bytes([blk[0], blk[1]]).to_f32(),
            GgmlType::Q8_0 => {
                let d = half_at(blk, 0);
                for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                    *o = d * (q as i8) as f32;
                }
            }
            GgmlType::Q4_0 => {
                let d = half_at(blk, 0);
                for j in 0..16 {
                    out[j] = d * ((blk[2 + j] & 0x0f) as i32 - 8) as f32;
                    out[j + 16] = d * ((blk[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                for j in 0..16 {
                    out[j] = d * (blk[4 + j] & 0x0f) as f32 + m;
                    out[j + 16] = d * (blk[4 + j] >> 4) as f32 + m;
                }
            }
            GgmlType::Q4K => q4k_block(blk, out),
            GgmlType::Q6K => q6k_block(blk, out),
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_and_q4_blocks() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
        // Q4_0: low nibbles are values 0..16, high nibbles 16..32.
        let mut b = h(2.0).to_vec();
        b.extend((0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32);
        assert_eq!(y[0], -16.0);
        assert_eq!(y[15], 14.0);
        assert_eq!(y[16], 14.0);
        // Q4_1: d * q + m.
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend([0x21u8; 16]);
        let y = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!((y[0], y[16]), (-0.75, -0.5));
    }

    #[test]
    fn q4_k_scales_and_mins() {
        // d = 1, dmin = 0.5; sub-block scales 1..8 and mins 8..1 packed as ggml packs them.
        let sc: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let mn: [u8; 8] = [8, 7, 6, 5, 4, 3, 2, 1];
        let mut packed = [0u8; 12];
        packed[..4].copy_from_slice(&sc[..4]);
        packed[4..8].copy_from_slice(&mn[..4]);
        for j in 4..8 {
            packed[j + 4] = (sc[j] & 0x0f) | ((mn[j] & 0x0f) << 4);
            packed[j - 4] |= (sc[j] >> 4) << 6;
            packed[j] |= (mn[j] >> 4) << 6;
        }
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(packed);
        b.extend([0x53u8; 128]); // low nibble 3, high nibble 5
        let y = dequantize(GgmlType::Q4K, &b, 256);
        for g in 0..4 {
            let (s1, m1, s2, m2) = (sc[2 * g], mn[2 * g], sc[2 * g + 1], mn[2 * g + 1]);
            assert_eq!(y[64 * g], s1 as f32 * 3.0 - 0.5 * m1 as f32, "group {g} low");
            assert_eq!(
                y[64 * g + 32],
                s2 as f32 * 5.0 - 0.5 * m2 as f32,
                "group {g} high"
            );
        }
    }

    #[test]
    fn q6_k_values() {
        // All 6-bit quants = 33 (so q - 32 = 1): ql nibbles 1, qh 2-bit fields 2.
        let mut b = vec![0x11u8; 128];
        b.extend([0b1010_1010u8; 64]);
        b.extend((0..16).map(|i| (i as i8 - 8) as u8));
        b.extend(h(0.25));
        let y = dequantize(GgmlType::Q6K, &b, 256);
        // Element l of the first half uses scale sc[l / 16].
        assert_eq!(y[0], 0.25 * -8.0);
        assert_eq!(y[16], 0.25 * -7.0);
        assert_eq!(y[32], 0.25 * -6.0);
        assert_eq!(y[128], 0.25 * 0.0);
        assert_eq!(y[255], 0.25 * 7.0);
    }
}
