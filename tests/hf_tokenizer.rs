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

/// A tokenizer.json that asks for truncation and padding: prompts are
/// still encoded whole and unpadded (transformers' default), and a stride
/// the tokenizers crate would assert on is harmless.
#[test]
fn saved_truncation_and_padding_are_not_applied() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let plain = hf::HfTokenizer::load_if_present(&root).unwrap().unwrap();
    let dir = std::env::temp_dir().join(format!("optc-tok-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tokenizer.json")).unwrap()).unwrap();
    json["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 2
    });
    json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&json).unwrap()).unwrap();
    let tok = hf::HfTokenizer::load_if_present(&dir).unwrap().unwrap();
    let text = "one two three four five";
    let ids = tok.encode(text, true).unwrap();
    assert!(ids.len() > 2 && ids.len() < 64, "{ids:?}");
    assert_eq!(ids, plain.encode(text, true).unwrap());
}
