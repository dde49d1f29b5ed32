//! Incremental detokenisation for streaming, and stop strings.
//!
//! Decoding token by token does not work for byte-level vocabularies: a
//! character can span tokens, and some tokenizers change the text of earlier
//! tokens when later ones arrive. So each step decodes a short window of
//! recent tokens twice (without and with the new token) and emits the
//! difference, holding back text that ends in an incomplete character.
//! Stop strings are searched in the generated text; text that could still
//! become the start of a stop string is held back until it cannot.

/// What the runtime needs of a tokenizer.
pub trait Decode {
    /// The text of `ids` (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}

/// How many prompt tokens before the first output token the window starts
/// with (enough context for tokenizers that look back, like SentencePiece's
/// leading-space handling).
const LOOKBACK: usize = 5;

/// One request's streaming state.
#[derive(Clone, Debug)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// The generated text so far (complete characters only).
    text: String,
    /// How much of `text` was handed out.
    emitted: usize,
    stop: Vec<String>,
    /// Where a stop string was found: generation is over and the text ends here.
    stopped_at: Option<usize>,
}

/// What one token added.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// New text to show.
    pub text: String,
    /// A stop string matched (its text is not included).
    pub stopped: bool,
}

impl Detokenizer {
    pub fn new(prompt: &[u32], stop: Vec<String>) -> Detokenizer {
        Detokenizer {
            ids: prompt.to_vec(),
            prefix_offset: prompt.len().saturating_sub(LOOKBACK),
            read_offset: prompt.len(),
            text: String::new(),
            emitted: 0,
            stop,
            stopped_at: None,
        }
    }

    /// The generated text so far, without any stop string.
    pub fn text(&self) -> &str {
        &self.text[..self.stopped_at.unwrap_or(self.text.len())]
    }

    fn max_stop_chars(&self) -> usize {
        self.stop.iter().map(|s| s.chars().count()).max().unwrap_or(0)
    }

    /// Adds a generated token and returns the text it made showable.
    pub fn push(&mut self, dec: &dyn Decode, id: u32) -> Result<Delta, String> {
        if self.stopped_at.is_some() {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let prefix = dec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = dec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let before = self.text.len();
            self.text.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            // A stop string can only end in what was just added.
            let from = self.text[..before]
                .char_indices()
                .rev()
                .nth(self.max_stop_chars().saturating_sub(1))
                .map_or(0, |(i, _)| i);
            self.stopped_at = self
                .stop
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
                .min();
        }
        Ok(self.drain(false))
    }

    /// Hands out what can be shown: everything up to a matched stop string,
    /// or everything but a tail that could still start one (all of it when
    /// `finished`).
    fn drain(&mut self, finished: bool) -> Delta {
        let end = match self.stopped_at {
            Some(s) => s,
            None if finished => self.text.len(),
            None => {
                let hold = self.max_stop_chars().saturating_sub(1);
                let cut = self
                    .text
                    .char_indices()
                    .rev()
                    .nth(hold.saturating_sub(1))
                    .map_or(0, |(i, _)| i);
                if hold == 0 {
                    self.text.len()
                } else {
                    cut.max(self.emitted)
                }
            }
        };
        let end = end.max(self.emitted);
        let text = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Delta {
            text,
            stopped: self.stopped_at.is_some(),
        }
    }

    /// Ends the stream: hands out any text still held back.
    pub fn finish(&mut self) -> Delta {
        self.drain(true)
    }
}
