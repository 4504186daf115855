//! Diagnostics: `FILE:LINE:COL: error: message`, the source line, and a caret under the span.

use crate::ast::Span;
use std::fmt::Write;

/// One error found in a source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    /// Extra lines printed after the caret (`= note: …`).
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

/// A source file: its display name and its text.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// Render one diagnostic the way compilers do.
    pub fn render(&self, d: &Diagnostic) -> String {
        let (line, col) = self.line_col(d.span.start);
        let mut out = format!("{}:{}:{}: error: {}\n", self.name, line, col, d.message);
        let start = floor_char_boundary(&self.text, d.span.start.min(self.text.len()));
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let src_line = &self.text[line_start..line_end];
        // Very long lines (minified junk) are cut around the caret.
        let (shown, caret_col) = clip_line(src_line, col - 1);
        let width = if d.span.end > d.span.start {
            let end = floor_char_boundary(&self.text, d.span.end.min(line_end));
            self.text[start..end.max(start)].chars().count().max(1)
        } else {
            1
        };
        let width = width.min(shown.chars().count().saturating_sub(caret_col).max(1));
        let gutter = line.to_string().len();
        let _ = writeln!(out, "{:gutter$} |", "");
        let _ = writeln!(out, "{line} | {shown}");
        let _ = writeln!(
            out,
            "{:gutter$} | {}{}",
            "",
            " ".repeat(caret_col),
            "^".repeat(width)
        );
        for n in &d.notes {
            let _ = writeln!(out, "{:gutter$} = note: {n}", "");
        }
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Keep at most 120 characters of a line, around column `col` (0-based, in chars).
fn clip_line(line: &str, col: usize) -> (String, usize) {
    const MAX: usize = 120;
    let chars: Vec<char> = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if chars.len() <= MAX {
        let n = chars.len();
        return (chars.into_iter().collect(), col.min(n));
    }
    let start = col
        .saturating_sub(MAX / 2)
        .min(chars.len().saturating_sub(MAX));
    let end = (start + MAX).min(chars.len());
    let mut s: String = chars[start..end].iter().collect();
    let mut c = col - start;
    if start > 0 {
        s = format!("…{s}");
        c += 1;
    }
    if end < chars.len() {
        s.push('…');
    }
    (s, c)
}

/// The name closest to `wanted` among `known` (edit distance at most a third of its length).
pub fn nearest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wanted.chars().count() / 3).max(1);
    known
        .into_iter()
        .filter(|k| *k != wanted)
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// transpositions of neighbours each cost 1 (`sdg` is one step from `sgd`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_col_and_caret() {
        let src = Source::new("a.dl", "model A {\n  x = foo\n}\n");
        let d = Diagnostic::new(Span::new(16, 19), "unknown name `foo`");
        let r = src.render(&d);
        assert!(
            r.starts_with("a.dl:2:7: error: unknown name `foo`\n"),
            "{r}"
        );
        assert!(r.contains("2 |   x = foo\n"), "{r}");
        assert!(r.contains("  |       ^^^\n"), "{r}");
    }

    #[test]
    fn nearest_name() {
        assert_eq!(
            nearest("dense3", ["dense1", "relu", "forward"]),
            Some("dense1")
        );
        assert_eq!(nearest("sigmod", ["sigmoid", "tanh"]), Some("sigmoid"));
        assert_eq!(nearest("zzz", ["sigmoid", "tanh"]), None);
        assert_eq!(nearest("sdg", ["sgd", "adam"]), Some("sgd"));
    }
}
