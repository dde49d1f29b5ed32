//! Symbolic sizes: torch writes each `SymInt` expression as sympy's
//! `srepr` (`Mul(Integer(64), Symbol('s70', positive=True, integer=True))`).
//! Polynomials in the symbols become IR [`Dim`]s; anything else (`Min`,
//! `FloorDiv`, ...) is reported, and only matters where a size needs it.

use optc_ir::Dim;

/// Parses one `srepr` expression into a dim.
pub fn parse_dim(text: &str) -> Result<Dim, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let d = p.expr()?;
    p.ws();
    if p.at != p.s.len() {
        return Err(format!("unexpected text after the expression in {text:?}"));
    }
    Ok(d)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

/// Deepest nesting accepted (the fuzzer must not overflow the stack).
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> &str {
        self.ws();
        let start = self.at;
        while self.at < self.s.len() && (self.s[self.at].is_ascii_alphanumeric() || self.s[self.at] == b'_') {
            self.at += 1;
        }
        std::str::from_utf8(&self.s[start..self.at]).unwrap_or("")
    }

    fn int(&mut self) -> Result<i64, String> {
        self.ws();
        let start = self.at;
        if self.s.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        while self.at < self.s.len() && self.s[self.at].is_ascii_digit() {
            self.at += 1;
        }
        let t = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
        t.parse()
            .map_err(|_| format!("expected an integer at byte {start}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.ws();
        let q = *self.s.get(self.at).ok_or("expected a quoted name")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a quoted name at byte {}", self.at));
        }
        self.at += 1;
        let start = self.at;
        while self.at < self.s.len() && self.s[self.at] != q {
            self.at += 1;
        }
        if self.at == self.s.len() {
            return Err("unterminated quoted name".into());
        }
        let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
        self.at += 1;
        Ok(name)
    }

    /// Skips `key=value` keyword arguments up to the closing parenthesis.
    fn skip_keywords(&mut self) -> Result<(), String> {
        while self.eat(b',') {
            let k = self.ident().to_string();
            if k.is_empty() || !self.eat(b'=') {
                return Err("expected a keyword argument".into());
            }
            self.ident();
        }
        if !self.eat(b')') {
            return Err(format!("expected ')' at byte {}", self.at));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Dim, String> {
        self.expr_at(0)
    }

    fn expr_at(&mut self, depth: usize) -> Result<Dim, String> {
        if depth > MAX_DEPTH {
            return Err("size expression nested too deeply".into());
        }
        self.ws();
        if self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_digit() || *c == b'-')
        {
            return Ok(Dim::constant(self.int()?));
        }
        let head = self.ident().to_string();
        if head.is_empty() {
            return Err(format!("expected an expression at byte {}", self.at));
        }
        if !self.eat(b'(') {
            // A bare name: a symbol as plain `str()` would print it.
            return Ok(Dim::sym(head));
        }
        match head.as_str() {
            "Symbol" => {
                let name = self.string()?;
                self.skip_keywords()?;
                if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    return Err(format!("symbol name {name:?} is not an identifier"));
                }
                Ok(Dim::sym(name))
            }
            "Integer" => {
                let v = self.int()?;
                if !self.eat(b')') {
                    return Err("expected ')' after Integer".into());
                }
                Ok(Dim::constant(v))
            }
            "Add" | "Mul" => {
                let mut acc = if head == "Add" {
                    Dim::constant(0)
                } else {
                    Dim::constant(1)
                };
                loop {
                    let t = self.expr_at(depth + 1)?;
                    acc = if head == "Add" {
                        &acc + &t
                    } else {
                        acc.checked_mul(&t).ok_or("size expression too large")?
                    };
                    if self.eat(b')') {
                        break;
                    }
                    if !self.eat(b',') {
                        return Err(format!("expected ',' or ')' at byte {}", self.at));
                    }
                }
                Ok(acc)
            }
            "Pow" => {
                let base = self.expr_at(depth + 1)?;
                if !self.eat(b',') {
                    return Err("expected ',' in Pow".into());
                }
                let e = self.expr_at(depth + 1)?;
                if !self.eat(b')') {
                    return Err("expected ')' after Pow".into());
                }
                let n = e
                    .as_const()
                    .filter(|n| (0..=16).contains(n))
                    .ok_or_else(|| format!("Pow with exponent {e} is not a polynomial"))?;
                let mut acc = Dim::constant(1);
                for _ in 0..n {
                    acc = acc.checked_mul(&base).ok_or("size expression too large")?;
                }
                Ok(acc)
            }
            other => Err(format!("{other}(...) is not a polynomial size")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> Dim {
        Dim::sym(n)
    }

    #[test]
    fn polynomials_parse() {
        let sym = "Symbol('s70', positive=True, integer=True)";
        assert_eq!(parse_dim(sym).unwrap(), s("s70"));
        assert_eq!(
            parse_dim(&format!("Mul(Integer(64), {sym})")).unwrap(),
            Dim::constant(64) * s("s70")
        );
        assert_eq!(
            parse_dim(&format!("Pow({sym}, Integer(2))")).unwrap(),
            s("s70") * s("s70")
        );
        assert_eq!(
            parse_dim(&format!("Add(Integer(-1), {sym})")).unwrap(),
            s("s70") - Dim::constant(1)
        );
        assert_eq!(parse_dim("7").unwrap(), Dim::constant(7));
    }

    #[test]
    fn other_functions_are_errors() {
        let e = parse_dim("Min(Integer(1), Symbol('s0'))").unwrap_err();
        assert!(e.contains("Min"), "{e}");
        assert!(parse_dim("Mul(Integer(2), ").is_err());
        assert!(parse_dim("Symbol('a b')").is_err());
        let deep = "Add(".repeat(200) + "1" + &")".repeat(200);
        assert!(parse_dim(&deep).is_err());
    }
}
