//! Rotary inverse frequencies, computed like transformers' rope init
//! functions (these are buffers there, constants here).

use super::config::{ModelConfig, RopeScaling};

/// `inv_freq` for `dim` rotated channels (length `dim / 2`).
pub fn inv_freq(config: &ModelConfig, dim: usize) -> Vec<f32> {
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| {
            // transformers: 1 / base^(arange(0, dim, 2) / dim), in f32
            let e = (2 * i) as f32 / dim as f32;
            (1.0 / (config.rope_theta as f32).powf(e)) as f64
        })
        .collect();
    let out: Vec<f64> = match &config.rope_scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    out.into_iter().map(|f| f as f32).collect()
}
