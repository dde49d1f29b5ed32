//! Tokens of the text form, with line:column positions for error messages.

use crate::parser::ParseError;

/// A `%` name: numbered op result or a named value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Local {
    Num(u64),
    Named(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Local(Local),
    Global(String),
    Str(String),
    Int(u64),
    Float(f64),
    Punct(&'static str),
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Local(Local::Num(n)) => format!("'%{n}'"),
            Tok::Local(Local::Named(s)) => format!("'%{s}'"),
            Tok::Global(s) => format!("'@{s}'"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("'{i}'"),
            Tok::Float(x) => format!("'{x}'"),
            Tok::Punct(p) => format!("'{p}'"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// A token and where it starts (1-based).
#[derive(Clone, Debug)]
pub struct Spanned {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    line: usize,
    col: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn bump(&mut self) -> Option<char> {
        let (_, c) = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn err(&self, line: usize, col: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            line,
            col,
            message: msg.into(),
        }
    }

    fn word(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        s
    }

    fn string(&mut self, line: usize, col: usize) -> Result<String, ParseError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err(line, col, "unterminated string")),
                Some('"') => return Ok(s),
                Some('\\') => {
                    let (l, c) = (self.line, self.col);
                    let e = match self.bump() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('0') => '\0',
                        Some('\\') => '\\',
                        Some('"') => '"',
                        Some('\'') => '\'',
                        Some('u') => {
                            if self.bump() != Some('{') {
                                return Err(self.err(l, c, "expected '{' after \\u"));
                            }
                            let mut hex = String::new();
                            while let Some(ch) = self.bump() {
                                if ch == '}' {
                                    break;
                                }
                                hex.push(ch);
                                if hex.len() > 6 {
                                    break;
                                }
                            }
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    self.err(l, c, format!("invalid unicode escape \\u{{{hex}}}"))
                                })?
                        }
                        other => {
                            return Err(self.err(
                                l,
                                c,
                                format!("unknown escape '\\{}'", other.unwrap_or(' ')),
                            ));
                        }
                    };
                    s.push(e);
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok, ParseError> {
        let mut s = String::new();
        let mut float = false;
        while let Some(c) = self.peek() {
            let exp_sign = (c == '-' || c == '+') && s.ends_with(['e', 'E']);
            if c.is_ascii_digit() || exp_sign {
                s.push(c);
            } else if c == '.' || c == 'e' || c == 'E' {
                float = true;
                s.push(c);
            } else {
                break;
            }
            self.bump();
        }
        if float {
            s.parse::<f64>()
                .map(Tok::Float)
                .map_err(|_| self.err(line, col, format!("malformed number '{s}'")))
        } else {
            s.parse::<u64>()
                .map(Tok::Int)
                .map_err(|_| self.err(line, col, format!("integer '{s}' is too large")))
        }
    }
}

/// Splits the text into tokens; `//` starts a comment to the end of the line.
pub fn lex(text: &str) -> Result<Vec<Spanned>, ParseError> {
    let mut cur = Cursor {
        chars: text.char_indices().peekable(),
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    loop {
        while let Some(c) = cur.peek() {
            if c.is_whitespace() {
                cur.bump();
            } else if c == '/' {
                let (l, col) = (cur.line, cur.col);
                cur.bump();
                if cur.peek() != Some('/') {
                    return Err(cur.err(l, col, "unexpected '/' (comments start with //)"));
                }
                while let Some(c) = cur.peek() {
                    if c == '\n' {
                        break;
                    }
                    cur.bump();
                }
            } else {
                break;
            }
        }
        let (line, col) = (cur.line, cur.col);
        let Some(c) = cur.peek() else {
            out.push(Spanned {
                tok: Tok::Eof,
                line,
                col,
            });
            return Ok(out);
        };
        let tok = match c {
            '%' | '@' => {
                cur.bump();
                let name = match cur.peek() {
                    Some('"') => {
                        cur.bump();
                        Local::Named(cur.string(line, col)?)
                    }
                    Some(d) if d.is_ascii_digit() && c == '%' => {
                        let w = cur.word();
                        match w.parse::<u64>() {
                            Ok(n) => Local::Num(n),
                            Err(_) => return Err(cur.err(line, col, format!("malformed value name '%{w}'"))),
                        }
                    }
                    Some(d) if d.is_ascii_alphabetic() || d == '_' => Local::Named(cur.word()),
                    _ => return Err(cur.err(line, col, format!("expected a name after '{c}'"))),
                };
                match (c, name) {
                    ('%', l) => Tok::Local(l),
                    (_, Local::Named(n)) => Tok::Global(n),
                    (_, Local::Num(_)) => unreachable!("'@' names never lex as numbers"),
                }
            }
            '"' => {
                cur.bump();
                Tok::Str(cur.string(line, col)?)
            }
            d if d.is_ascii_digit() => cur.number(line, col)?,
            a if a.is_ascii_alphabetic() || a == '_' => Tok::Ident(cur.word()),
            '-' => {
                cur.bump();
                if cur.peek() == Some('>') {
                    cur.bump();
                    Tok::Punct("->")
                } else {
                    Tok::Punct("-")
                }
            }
            _ => {
                cur.bump();
                let p = match c {
                    '(' => "(",
                    ')' => ")",
                    '[' => "[",
                    ']' => "]",
                    '{' => "{",
                    '}' => "}",
                    ',' => ",",
                    ':' => ":",
                    '=' => "=",
                    '+' => "+",
                    '*' => "*",
                    other => return Err(cur.err(line, col, format!("unexpected character {other:?}"))),
                };
                Tok::Punct(p)
            }
        };
        out.push(Spanned { tok, line, col });
    }
}
