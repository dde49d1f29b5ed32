//! Streaming text: multi-byte characters split across tokens never show a
//! replacement character, the pieces add up to the whole text, and stop
//! strings end the text without showing any of themselves.

use optc_runtime::detokenize::{Decode, Detokenizer};

/// A byte-level vocabulary: token id = byte.
struct Bytes;

impl Decode for Bytes {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let b: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

fn stream(text: &str, stop: &[&str]) -> (Vec<String>, String, bool) {
    let mut d = Detokenizer::new(&[b'>' as u32], stop.iter().map(|s| s.to_string()).collect());
    let mut pieces = Vec::new();
    let mut stopped = false;
    for b in text.bytes() {
        let delta = d.push(&Bytes, b as u32).unwrap();
        stopped |= delta.stopped;
        pieces.push(delta.text);
        if stopped {
            break;
        }
    }
    pieces.push(d.finish().text);
    (pieces, d.text().to_string(), stopped)
}

#[test]
fn split_characters_are_held_until_complete() {
    let text = "a😀 é日本";
    let (pieces, all, stopped) = stream(text, &[]);
    assert!(!stopped);
    assert_eq!(all, text);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // The emoji's 4 bytes yield one piece holding the whole emoji.
    assert!(pieces.contains(&"😀".to_string()), "{pieces:?}");
}

#[test]
fn stop_strings_end_the_text_and_never_show() {
    let (pieces, all, stopped) = stream("Hello, world! STOP here", &["STOP", "xyz"]);
    assert!(stopped);
    assert_eq!(all, "Hello, world! ");
    assert_eq!(pieces.concat(), "Hello, world! ");
    assert!(pieces.iter().all(|p| !p.contains('S')));
    // A partial match that does not complete is shown in the end.
    let (pieces, all, stopped) = stream("a STO b", &["STOP"]);
    assert!(!stopped);
    assert_eq!(
        (pieces.concat(), all),
        ("a STO b".to_string(), "a STO b".to_string())
    );
}
