//! The tokenizer gives exactly the ids transformers gives (cases recorded by
//! `scripts/make_fixtures.py`: plain text, runs of spaces, newlines and tabs,
//! accents, CJK, emoji with ZWJ sequences, the empty string), and decoding
//! gives the text back.

use std::path::Path;

use optc::frontends::hf;

#[test]
fn ids_match_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let m = hf::load(root.join("llama")).unwrap();
    let tok = m.tokenizer.as_ref().expect("fixture has tokenizer.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tokenizer_cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let ids: Vec<i64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let with: Vec<i64> = c["ids_with_special"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), ids, "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            with,
            "{text:?} with special tokens"
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "decode {text:?}");
    }
    assert_eq!(m.generation.bos_token_id, tok.token_id("<|bos|>"));
    assert_eq!(m.generation.eos_token_ids, vec![tok.token_id("<|eos|>").unwrap()]);
}

/// Streaming the ids of each case through the incremental detokenizer gives
/// exactly the tokenizer's own decoding of the whole sequence.
#[test]
fn incremental_detokenisation_adds_up() {
    use optc::runtime::detokenize::Detokenizer;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let m = hf::load(root.join("llama")).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let dec = optc::TokenizerDecoder(tok);
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tokenizer_cases.json")).unwrap()).unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut d = Detokenizer::new(&[0], Vec::new());
        let mut out = String::new();
        for &i in &ids {
            let delta = d.push(&dec, i).unwrap();
            assert!(!delta.text.contains('\u{FFFD}'), "{delta:?}");
            out.push_str(&delta.text);
        }
        out.push_str(&d.finish().text);
        let want = tok
            .decode(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), true)
            .unwrap();
        assert_eq!(out, want, "{:?}", c["text"]);
    }
}
