//! Helpers shared by the top-level integration tests.

/// `n` values uniform in [-spread/2, spread/2) from a 64-bit LCG whose
/// state the caller keeps, so consecutive tensors draw different values
/// and a test's weights repeat from run to run without an RNG crate.
pub fn lcg_uniform(state: &mut u64, n: usize, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}
