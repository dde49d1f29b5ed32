//! `--check-passes`: random inputs for a graph, and the distance between two
//! runs' outputs.

use std::collections::BTreeMap;

use optc_ir::{Bindings, DType, Graph, Tensor};

/// How to check passes numerically.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Largest max-abs difference a pass may introduce, on top of four
    /// units in the last place of the output's dtype at the output's largest
    /// magnitude (a fused op rounds once where its chain rounded at every
    /// step, which in bf16 moves results by a few ulps).
    pub tolerance: f64,
    /// Value for every symbol not given in `symbols`.
    pub default_symbol: i64,
    pub symbols: BTreeMap<String, i64>,
    pub seed: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            tolerance: 1e-4,
            default_symbol: 4,
            symbols: BTreeMap::new(),
            seed: 0x0c0ffee,
        }
    }
}

/// Most elements a random check input may have (2^26: 256 MiB of f32).
const CHECK_INPUT_LIMIT: usize = 1 << 26;

/// Random inputs for every graph input: floats uniform in [-1, 1), integers
/// in [0, 4) (valid token ids for any vocabulary), bools at random. Symbols
/// take their configured values.
pub fn random_inputs(g: &Graph, cfg: &CheckConfig) -> Result<BTreeMap<String, Tensor>, String> {
    let mut bindings = Bindings::new();
    for s in g.symbols() {
        let v = cfg.symbols.get(&s).copied().unwrap_or(cfg.default_symbol);
        bindings.insert(s, v);
    }
    let mut state = cfg.seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = BTreeMap::new();
    for &i in g.inputs() {
        let name = g.node_name(i).unwrap_or_default().to_string();
        let ty = &g.node(i).outputs[0];
        let shape = ty
            .shape
            .eval(&bindings)
            .map_err(|e| format!("input %{name}: {e}"))?;
        // Random inputs for a check run: a few million elements at most.
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= CHECK_INPUT_LIMIT)
            .ok_or_else(|| {
                format!(
                    "input %{name}: shape {shape:?} is over {CHECK_INPUT_LIMIT} elements (pick smaller check symbols)"
                )
            })?;
        let t = if ty.dtype.is_float() {
            let v: Vec<f32> = (0..n)
                .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
                .collect();
            Tensor::from_f32(ty.dtype, &shape, &v)
        } else if ty.dtype == DType::Bool {
            let v: Vec<bool> = (0..n).map(|_| next() & 1 == 1).collect();
            Tensor::from_bool(&shape, &v)
        } else {
            let v: Vec<i64> = (0..n).map(|_| (next() % 4) as i64).collect();
            Tensor::from_i64(ty.dtype, &shape, &v)
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Whether `b` is within tolerance of the reference `a`: absolute
/// `tolerance` plus four ulps of each output's dtype at its largest magnitude.
pub fn within(a: &[Tensor], b: &[Tensor], tolerance: f64) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).all(|(x, y)| {
        let ulp = match x.dtype() {
            DType::BF16 => 2f64.powi(-7),
            DType::F16 => 2f64.powi(-10),
            DType::F8E4M3 => 2f64.powi(-3),
            _ => 2f64.powi(-23),
        };
        let scale = x
            .to_f64_vec()
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f64, |m, v| m.max(v.abs()));
        let err = max_abs_error(std::slice::from_ref(x), std::slice::from_ref(y));
        err <= tolerance + 4.0 * ulp * scale
    })
}

/// Largest absolute difference over all outputs (infinite on a shape or
/// dtype change; NaN against NaN counts as equal).
pub fn max_abs_error(a: &[Tensor], b: &[Tensor]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut err = 0f64;
    for (x, y) in a.iter().zip(b) {
        if x.dtype() != y.dtype() || x.shape() != y.shape() {
            return f64::INFINITY;
        }
        for (p, q) in x.to_f64_vec().into_iter().zip(y.to_f64_vec()) {
            let d = if p == q || (p.is_nan() && q.is_nan()) {
                0.0
            } else {
                (p - q).abs()
            };
            err = if d.is_nan() { f64::INFINITY } else { err.max(d) };
        }
    }
    err
}
