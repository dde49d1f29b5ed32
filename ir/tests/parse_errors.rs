//! Malformed text gives an error with line:column and what was expected,
//! never a panic.

use optc_ir::{parse, parse_type, print, verify};
use proptest::prelude::*;

fn err(text: &str) -> String {
    parse(text).expect_err("text should not parse").to_string()
}

const GOOD: &str = "graph g(%x: f32[B, S]) -> (%y: f32[B, S]) {\n  weight @w: f32[4] = \"w\"\n  %0: f32[B, S] = neg(%x) loc(\"a\")\n  return %0\n}\n";

#[test]
fn good_text_parses() {
    let g = parse(GOOD).unwrap();
    verify(&g).unwrap();
    assert_eq!(print(&g), GOOD);
}

#[test]
fn messages_name_position_and_expectation() {
    let cases: &[(&str, &str)] = &[
        ("", "1:1: expected 'graph', found end of input"),
        ("graph g(%x: f32[2]) -> (%y: f32[2]) {", "1:38: expected '}', found end of input"),
        ("graph g(%x: f99[2]) -> () {}", "1:13: unknown dtype 'f99' (expected one of f32, f64, f16, bf16, f8e4m3, f8e5m2, f8e4m3fnuz, f8e5m2fnuz, f8e8m0, f4e2m1, i8, u8, i16, u16, u32, u64, i2, u2, i4, u4, i32, i64, bool)"),
        ("graph g(%x: f32[2) -> () {}", "1:18: expected ',' or ']', found ')'"),
        ("graph g(x: f32[2]) -> () {}", "1:9: expected a named value like %ids, found 'x'"),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = frobnicate(%x)\n  return %0\n}",
            "2:16: unknown op 'frobnicate'",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = softmax(%x) {axes = 1}\n  return %0\n}",
            "2:16: unknown attribute 'axes' for softmax (expected one of: axis)",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = transpose(%x)\n  return %0\n}",
            "2:16: transpose needs attribute 'perm'",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = softmax(%x) {axis = 1.5}\n  return %0\n}",
            "2:16: attribute 'axis' of softmax: expected int, found float 1.5",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = neg(%x) {axis = 1}\n  return %0\n}",
            "2:16: unknown attribute 'axis' for neg (it takes none)",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = neg(%z)\n  return %0\n}",
            "2:20: %z is not defined",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = neg(%x)\n  %0: f32[2] = neg(%x)\n  return %0\n}",
            "3:3: value %0 is defined twice",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = neg(%x)\n}",
            "3:1: expected 'return' before the closing '}'",
        ),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  return %x, %x\n}",
            "2:3: return gives 2 value(s) but the graph declares 1 output(s)",
        ),
        ("graph g(%x: f32[2]) -> (%y: f32[2]) {\n  return %x\n}\n}", "4:1: expected end of input after the graph, found '}'"),
        ("graph g(%x: f32[\"a]) -> () {}", "1:17: unterminated string"),
        ("graph g(%x: f32[99999999999999999999]) -> () {}", "1:17: integer '99999999999999999999' is too large"),
        ("graph g(%x: f32[2]) -> () { $ }", "1:29: unexpected character '$'"),
        (
            "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = gelu(%x) {approximate = \"fast\"}\n  return %0\n}",
            "2:16: gelu: approximate must be \"none\" or \"tanh\", got \"fast\"",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&err(text), want, "for input:\n{text}");
    }
}

#[test]
fn types_parse_alone() {
    assert_eq!(
        parse_type("bf16[B, S+1, 2*H, B*S]").unwrap().to_string(),
        "bf16[B, S+1, 2*H, B*S]"
    );
    assert_eq!(parse_type("f32[(S+1)*2]").unwrap().to_string(), "f32[2*S+2]");
    assert_eq!(
        parse_type("f32[S] x").unwrap_err().to_string(),
        "1:8: expected end of the type, found 'x'"
    );
}

#[test]
fn dims_that_expand_combinatorially_are_rejected() {
    let sum = "(A+B+C+D+E+F+G+H)";
    let text = format!("graph g(%x: f32[{}]) -> () {{}}", [sum; 12].join("*"));
    assert!(
        err(&text).contains("dimension expression has more than 64 terms"),
        "{}",
        err(&text)
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let text = format!(
        "graph g(%x: f32[{}S{}]) -> () {{}}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(err(&text).contains("nesting deeper than 64"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any string: parse returns, it never panics.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }

    /// Valid text with one edit (delete, insert, or replace a character).
    #[test]
    fn edited_text_never_panics(pos in 0usize..200, c in any::<char>(), kind in 0u8..3) {
        let mut chars: Vec<char> = GOOD.chars().collect();
        let p = pos % chars.len();
        match kind {
            0 => { chars.remove(p); }
            1 => chars.insert(p, c),
            _ => chars[p] = c,
        }
        let text: String = chars.into_iter().collect();
        if let Ok(g) = parse(&text) {
            let _ = print(&g);
            let _ = verify(&g);
        }
    }
}

#[test]
fn extreme_integers_round_trip() {
    let text = "graph g(%x: f32[1]) -> (%y: i64[2], %z: i64[1]) {\n  %0: i64[2] = constant() {dtype = i64, shape = [2], value = [-9223372036854775808, 9223372036854775807]}\n  %1: i64[1] = full() {shape = [1], value = -9223372036854775808, dtype = i64}\n  return %0, %1\n}\n";
    let g = parse(text).unwrap();
    verify(&g).unwrap();
    assert_eq!(print(&g), text);
}
