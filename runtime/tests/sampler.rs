//! Sampling: greedy, the filters (each leaves exactly the tokens it should),
//! penalties, seeded reproducibility, logprobs, and parameter validation.

use optc_runtime::sampler::{apply_penalties, sample, Rng, SamplingParams};

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    f(&mut p);
    p
}

/// Which tokens a setting can ever produce, over many draws.
fn support(logits: &[f32], p: &SamplingParams) -> Vec<u32> {
    let mut rng = Rng::new(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        seen.insert(sample(logits, p, &[], &[], &mut rng).token);
    }
    seen.into_iter().collect()
}

const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, 0.0, 2.0];

#[test]
fn greedy_takes_the_argmax_lowest_id_on_ties() {
    let p = SamplingParams::greedy(4);
    assert_eq!(sample(&LOGITS, &p, &[], &[], &mut Rng::new(0)).token, 1);
    assert_eq!(sample(&[1.0, 5.0, 5.0], &p, &[], &[], &mut Rng::new(0)).token, 1);
}

#[test]
fn filters_keep_exactly_the_right_tokens() {
    assert_eq!(
        support(&LOGITS, &params(|p| p.top_k = Some(2))),
        vec![1, 2],
        "ties by id"
    );
    assert_eq!(support(&LOGITS, &params(|_| {})), vec![0, 1, 2, 3, 4]);
    // Probabilities ∝ e^[1,3,2,0,2]: token 1 alone holds 0.47 of the mass.
    assert_eq!(support(&LOGITS, &params(|p| p.top_p = 0.4)), vec![1]);
    assert_eq!(support(&LOGITS, &params(|p| p.top_p = 0.8)), vec![1, 2, 4]);
    // min_p 0.3: keep tokens with p >= 0.3 * p_max, i.e. logit >= 3 + ln 0.3 ≈ 1.8.
    assert_eq!(support(&LOGITS, &params(|p| p.min_p = 0.3)), vec![1, 2, 4]);
}

#[test]
fn draws_follow_the_distribution() {
    let p = params(|p| p.temperature = 1.0);
    let mut rng = Rng::new(7);
    let mut counts = [0usize; 2];
    for _ in 0..20000 {
        counts[sample(&[0.0, 1.0f32.ln() + 1.0], &p, &[], &[], &mut rng).token as usize] += 1;
    }
    // p(1) = e / (1 + e) ≈ 0.731
    let frac = counts[1] as f64 / 20000.0;
    assert!((frac - 0.731).abs() < 0.02, "{frac}");
}

#[test]
fn seeded_requests_repeat() {
    let p = params(|p| p.temperature = 0.8);
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        (0..20)
            .map(|_| sample(&LOGITS, &p, &[], &[], &mut rng).token)
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
}

#[test]
fn penalties() {
    let mut l = vec![2.0, -2.0, 1.0, 1.0];
    let p = params(|p| {
        p.repetition_penalty = 2.0;
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
    });
    // Token 0 in the prompt, token 1 in the prompt, token 2 twice in the output.
    apply_penalties(&mut l, &p, &[0, 1], &[2, 2]);
    assert_eq!(l, vec![1.0, -4.0, 0.5 - 0.5 - 0.5, 1.0]);
}

#[test]
fn logprobs_are_of_the_tempered_distribution() {
    let p = params(|p| {
        p.temperature = 0.0;
        p.logprobs = Some(2);
    });
    let s = sample(&[0.0, 2.0f32.ln()], &p, &[], &[], &mut Rng::new(0));
    assert_eq!(s.token, 1);
    assert!((s.logprob - (2.0f32 / 3.0).ln()).abs() < 1e-6);
    assert_eq!(s.top_logprobs.len(), 2);
    assert_eq!(s.top_logprobs[0].0, 1);
    assert!((s.top_logprobs[1].1 - (1.0f32 / 3.0).ln()).abs() < 1e-6);
}

#[test]
fn bad_parameters_are_named() {
    let bad = |f: fn(&mut SamplingParams)| params(f).validate(100).unwrap_err().to_string();
    assert_eq!(
        bad(|p| p.top_p = 0.0),
        "bad sampling parameters: top_p must be in (0, 1], got 0"
    );
    assert_eq!(
        bad(|p| p.top_p = 1.5),
        "bad sampling parameters: top_p must be in (0, 1], got 1.5"
    );
    assert_eq!(
        bad(|p| p.max_tokens = 0),
        "bad sampling parameters: max_tokens must be at least 1"
    );
    assert_eq!(
        bad(|p| p.temperature = -1.0),
        "bad sampling parameters: temperature must be a finite number >= 0, got -1"
    );
    assert_eq!(
        bad(|p| p.top_k = Some(0)),
        "bad sampling parameters: top_k must be at least 1 (or unset for all tokens)"
    );
    assert_eq!(
        bad(|p| p.stop_token_ids = vec![100]),
        "bad sampling parameters: stop token id 100 is outside the vocabulary (0..100)"
    );
    assert!(SamplingParams::default().validate(100).is_ok());
}

/// Logits at +inf share all the mass, as on the GPU: k of them give each a
/// log probability of -ln k, and greedy takes the first.
#[test]
fn logits_at_plus_infinity_share_the_mass() {
    let row = [1.0, f32::INFINITY, 0.0, f32::INFINITY];
    let greedy = sample(&row, &SamplingParams::greedy(1), &[], &[], &mut Rng::new(0));
    assert_eq!(greedy.token, 1);
    assert!(
        (f64::from(greedy.logprob) + 2f64.ln()).abs() < 1e-6,
        "{}",
        greedy.logprob
    );
}

/// NaN logits are never picked and take no mass, as on the GPU: greedy and
/// sampling keep to the other tokens (even with NaN at token 0), their log
/// probabilities are those of the row without the NaN, and a row of
/// nothing but NaN and -inf gives token 0 at -inf.
#[test]
fn nan_logits_are_never_picked() {
    let row = [f32::NAN, 1.0, f32::NAN, 3.0, 2.0];
    let greedy = sample(&row, &SamplingParams::greedy(1), &[], &[], &mut Rng::new(0));
    assert_eq!(greedy.token, 3);
    let without: [f32; 3] = [1.0, 3.0, 2.0];
    let lse = without.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
    assert!(
        (f64::from(greedy.logprob) - (3.0 - lse)).abs() < 1e-6,
        "{}",
        greedy.logprob
    );
    assert_eq!(support(&row, &params(|_| {})), vec![1, 3, 4]);
    assert_eq!(support(&row, &params(|p| p.top_k = Some(2))), vec![3, 4]);
    let mut rng = Rng::new(3);
    for _ in 0..100 {
        let s = sample(&row, &params(|p| p.temperature = 0.7), &[], &[], &mut rng);
        assert!(s.logprob.is_finite() && s.logprob < 0.0, "{s:?}");
    }
    for p in [SamplingParams::greedy(1), params(|_| {})] {
        let s = sample(
            &[f32::NAN, f32::NEG_INFINITY, f32::NAN],
            &p,
            &[],
            &[],
            &mut Rng::new(0),
        );
        assert_eq!((s.token, s.logprob), (0, f32::NEG_INFINITY));
    }
}
