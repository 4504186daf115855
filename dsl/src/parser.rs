//! Parsing: bytes → checked text → top-level chunks → pest → AST.
//!
//! pest stops at the first syntax error, so the file is first cut into top-level items
//! (a line starting with `model`, `fn` or `train` starts one) and each item is parsed on
//! its own: one syntax error is reported per item. Before pest sees anything, bracket
//! nesting is bounded by [`MAX_NESTING`] and the file size by [`MAX_FILE_BYTES`], so no
//! input can overflow the stack of the recursive-descent parser or of later tree walks.

use crate::ast::*;
use crate::diag::Diagnostic;
use pest::Parser as _;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct DlParser;

/// Spans at or above this offset belong to the prelude, not to the user's file.
pub const PRELUDE_BASE: usize = 1 << 40;

/// Files larger than this are refused.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Deepest bracket nesting — `(`, `[`, `{` — accepted in a file.
pub const MAX_NESTING: usize = 64;
/// Deepest expression tree (operators and postfix calls chained) accepted.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Check that raw bytes are a `.dl` source: size bound, UTF-8, no NUL bytes.
pub fn check_text(bytes: &[u8]) -> Result<&str, Diagnostic> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::new(
            Span::new(0, 0),
            format!(
                "file is {} bytes; .dl files are limited to {} bytes (1 MiB)",
                bytes.len(),
                MAX_FILE_BYTES
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            return Err(Diagnostic::new(
                Span::new(at, at),
                format!(
                    "file is not UTF-8 text (invalid byte 0x{:02x} at offset {at}); is it a binary file?",
                    bytes[at]
                ),
            ));
        }
    };
    if let Some(at) = text.find('\0') {
        return Err(Diagnostic::new(
            Span::new(at, at + 1),
            "file contains a NUL byte; is it a binary file?",
        ));
    }
    Ok(text)
}

/// Parse a whole file. Returns the items that parsed and one diagnostic per item that did not.
pub fn parse_file(text: &str) -> (File, Vec<Diagnostic>) {
    parse_file_at(text, 0)
}

/// Like [`parse_file`], with every span shifted by `base` (the prelude is parsed at
/// [`PRELUDE_BASE`] so its spans can be told apart from the user's file).
pub fn parse_file_at(text: &str, base: usize) -> (File, Vec<Diagnostic>) {
    pest::set_call_limit(std::num::NonZeroUsize::new(50_000_000));
    let mut items = Vec::new();
    let mut diags = Vec::new();
    // The line each chunk starts on (for notes), counted as the chunks go by.
    let (mut first_line, mut counted_to) = (1, 0);
    for (start, end) in split_items(text) {
        let chunk = &text[start..end];
        if is_blank(chunk) {
            continue;
        }
        if let Err(d) = check_nesting(chunk, base + start) {
            diags.push(d);
            continue;
        }
        first_line += text[counted_to..start].matches('\n').count();
        counted_to = start;
        match parse_item(chunk, base + start, first_line) {
            Ok(item) => items.push(item),
            Err(d) => diags.push(d),
        }
    }
    (File { items }, diags)
}

/// Cut the text into top-level items: a new item starts at a line whose first word, at
/// column 0, is `model`, `train` or (outside any brackets) `fn`. Text before the first
/// such line is its own chunk. `model` and `train` cannot nest, so they start an item
/// even after unbalanced brackets, which keeps a truncated item from swallowing the rest.
fn split_items(text: &str) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    let mut offset = 0;
    let mut depth = 0usize;
    for line in text.split_inclusive('\n') {
        let word: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_item = match word.as_str() {
            "model" | "train" | "import" => true,
            "fn" => depth == 0,
            _ => false,
        };
        if offset > 0 && starts_item {
            starts.push(offset);
            depth = 0;
        }
        depth = bracket_depth_after(line, depth);
        offset += line.len();
    }
    let mut out = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(text.len());
        out.push((s, e));
    }
    out
}

/// Bracket depth after a line, skipping comments and strings.
fn bracket_depth_after(line: &str, mut depth: usize) -> usize {
    let mut in_string = false;
    for c in line.chars() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => break,
            '(' | '[' | '{' if !in_string => depth += 1,
            ')' | ']' | '}' if !in_string => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    depth
}

/// Whether a chunk holds only whitespace and comments.
fn is_blank(chunk: &str) -> bool {
    chunk.lines().all(|l| {
        let t = l.trim_start();
        t.is_empty() || t.starts_with('#')
    })
}

/// Bound bracket nesting and runs of prefix operators before the recursive parser sees them.
fn check_nesting(chunk: &str, base: usize) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut minus_run = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    // `else if` chains nest without brackets: their count is bounded too.
    let (mut word, mut last_word, mut else_ifs) = (String::new(), String::new(), 0usize);
    for (i, c) in chunk.char_indices() {
        if !in_comment && !in_string && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
        } else if !word.is_empty() {
            if word == "if" && last_word == "else" {
                else_ifs += 1;
                if else_ifs > MAX_NESTING {
                    return Err(Diagnostic::new(
                        Span::new(base + i - 2, base + i),
                        format!("more than {MAX_NESTING} `else if` in one item"),
                    ));
                }
            }
            last_word = std::mem::take(&mut word);
        }
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            in_string = c != '"' && c != '\n';
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::new(
                        Span::new(base + i, base + i + 1),
                        format!("brackets nested deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == '-' {
            minus_run += 1;
            if minus_run > MAX_NESTING {
                return Err(Diagnostic::new(
                    Span::new(base + i, base + i + 1),
                    format!("more than {MAX_NESTING} `-` operators in a row"),
                ));
            }
        } else if !c.is_whitespace() {
            minus_run = 0;
        }
    }
    Ok(())
}

/// Parse one item; `first_line` is the 1-based line of the file the chunk starts on.
fn parse_item(chunk: &str, base: usize, first_line: usize) -> Result<Item, Diagnostic> {
    let mut pairs = DlParser::parse(Rule::item, chunk).map_err(|e| {
        let mut d = syntax_error(e, base);
        if d.span.start - base >= chunk.trim_end().len() {
            d.message = format!("unexpected end of file; {}", d.message);
        }
        if let Some(note) = bracket_line_note(chunk, d.span.start - base, first_line) {
            d = d.with_note(note);
        }
        d
    })?;
    let pair = pairs
        .next()
        .ok_or_else(|| Diagnostic::new(Span::new(base, base), "expected an item"))?;
    let b = Builder { base };
    match pair.as_rule() {
        Rule::model_def => b.model(pair).map(Item::Model),
        Rule::fn_def => b.fn_def(pair).map(Item::Fn),
        Rule::train_def => b.train(pair).map(Item::Train),
        Rule::import_def => {
            let span = b.span(&pair);
            let lit = pair
                .into_inner()
                .next()
                .ok_or_else(|| Diagnostic::new(span, "expected a file name in quotes"))?;
            let text = lit.as_str();
            Ok(Item::Import(Import {
                path: text[1..text.len() - 1].to_string(),
                span,
            }))
        }
        r => Err(Diagnostic::new(b.span(&pair), format!("unexpected {r:?}"))),
    }
}

/// A syntax error caused by the newline rule — a line that starts with `(` or `[` begins a
/// new expression instead of calling or indexing the end of the line before — gets a note
/// that says so. The test is direct: join that line to the code line before it (the newline,
/// indentation and any comment between become spaces, so offsets do not move) and parse
/// again; if the item then parses, the split was the problem. Only errors at the first
/// token of a line (where the expression begun by such a line ends) are considered, and
/// only the few such lines nearest before the error.
fn bracket_line_note(chunk: &str, err_at: usize, first_line: usize) -> Option<String> {
    const TRIES: usize = 4;
    let err_at = err_at.min(chunk.len());
    let line_start = chunk[..err_at].rfind('\n').map_or(0, |i| i + 1);
    if !chunk[line_start..err_at].trim().is_empty() {
        return None;
    }
    // The last line with code: its index, the offset where its code ends (before trailing
    // blanks and any comment), and its last character.
    let mut prev_code: Option<(usize, usize, char)> = None;
    let mut candidates = Vec::new();
    let mut offset = 0;
    for (i, line) in chunk.split_inclusive('\n').enumerate() {
        let code = code_part(line);
        let trimmed = code.trim_start();
        let at = offset + (code.len() - trimmed.len());
        if let (Some(open @ ('(' | '[')), Some((prev_line, prev_end, last))) =
            (trimmed.chars().next(), prev_code)
        {
            let complete = last.is_ascii_alphanumeric() || matches!(last, '_' | ')' | ']' | '"');
            if complete && at <= err_at {
                candidates.push((i, at, open, prev_line, prev_end));
            }
        }
        let code = code.trim_end();
        if let Some(last) = code.chars().last() {
            prev_code = Some((i, offset + code.len(), last));
        }
        offset += line.len();
    }
    for &(line, at, open, prev_line, prev_end) in candidates.iter().rev().take(TRIES) {
        let joined = format!(
            "{}{}{}",
            &chunk[..prev_end],
            " ".repeat(at - prev_end),
            &chunk[at..]
        );
        if DlParser::parse(Rule::item, &joined).is_ok() {
            let (verb, what, object) = if open == '(' {
                ("calling", "a call's `(`", "calls")
            } else {
                ("indexing", "an index's `[`", "indexes")
            };
            return Some(format!(
                "line {} starts with `{open}`, so it begins a new expression rather than \
                 {verb} the end of line {} ({what} must be on the line of what it {object})",
                first_line + line,
                first_line + prev_line,
            ));
        }
    }
    None
}

/// A line without its comment (a `#` outside a string).
fn code_part(line: &str) -> &str {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

fn syntax_error(e: pest::error::Error<Rule>, base: usize) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let at = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                "syntax error".to_string()
            } else {
                format!("syntax error: expected {}", join_or(&names))
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    Diagnostic::new(Span::new(base + at, base + at + 1), message)
}

fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of input",
        Rule::ident => "a name",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::model_def => "`model`",
        Rule::fn_def => "`fn`",
        Rule::train_def => "`train`",
        Rule::expr | Rule::postfix_expr | Rule::list | Rule::paren => "an expression",
        Rule::model_params | Rule::call_args => "`(`",
        Rule::binding => "`name = value`",
        Rule::objective => "`minimize`",
        Rule::bare_call => "a call",
        Rule::block => "`{`",
        Rule::ret_type => "`->`",
        Rule::type_expr => "a type such as f32[B, 10]",
        Rule::fn_params | Rule::fn_param => "a parameter",
        Rule::let_stmt => "`let`",
        Rule::pattern | Rule::tuple_pattern => "a pattern",
        Rule::data_spec => "a data set name",
        Rule::index | Rule::index_item | Rule::slice => "`[`",
        Rule::field => "`.`",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul | Rule::pow => "an operator",
        Rule::lt | Rule::le | Rule::gt | Rule::ge | Rule::eq | Rule::ne => "an operator",
        Rule::neg => "`-`",
        Rule::arg => "an argument",
        Rule::over_clause => "`over`",
        Rule::kw_if | Rule::if_expr => "`if`",
        Rule::kw_else => "`else`",
        Rule::with_clause => "`with`",
        _ => return None,
    })
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::infix(Rule::pow, Assoc::Right))
    })
}

/// Turns pest pairs into AST nodes, shifting spans by the chunk's offset.
struct Builder {
    base: usize,
}

type R<T> = Result<T, Diagnostic>;

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.base + s.start(), self.base + s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn model(&self, p: Pair<Rule>) -> R<ModelDef> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("grammar: model name"));
        let mut m = ModelDef {
            name,
            params: vec![],
            bindings: vec![],
            fns: vec![],
            span,
        };
        for q in it {
            match q.as_rule() {
                Rule::model_params => {
                    for mp in q.into_inner() {
                        let mut jt = mp.into_inner();
                        let name = self.ident(jt.next().expect("grammar: param name"));
                        let default = jt.next().map(|e| self.expr(e)).transpose()?;
                        m.params.push(ModelParam { name, default });
                    }
                }
                Rule::binding => m.bindings.push(self.binding(q)?),
                Rule::fn_def => m.fns.push(self.fn_def(q)?),
                _ => {}
            }
        }
        Ok(m)
    }

    fn binding(&self, p: Pair<Rule>) -> R<Binding> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("grammar: binding name"));
        let value = self.expr(it.next().expect("grammar: binding value"))?;
        Ok(Binding { name, value })
    }

    fn fn_def(&self, p: Pair<Rule>) -> R<FnDef> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("grammar: fn name"));
        let mut params = Vec::new();
        let mut ret = None;
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::fn_params => {
                    for fp in q.into_inner() {
                        let mut jt = fp.into_inner();
                        let name = self.ident(jt.next().expect("grammar: param"));
                        let ty = jt.next().map(|t| self.type_expr(t)).transpose()?;
                        params.push(FnParam { name, ty });
                    }
                }
                Rule::ret_type => {
                    ret = Some(self.type_expr(q.into_inner().next().expect("grammar: type"))?)
                }
                Rule::block => body = Some(self.block(q)?),
                _ => {}
            }
        }
        Ok(FnDef {
            name,
            params,
            ret,
            body: body.expect("grammar: fn body"),
            span,
        })
    }

    fn type_expr(&self, p: Pair<Rule>) -> R<TypeExpr> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let dtype = self.ident(it.next().expect("grammar: dtype"));
        let dims = it.map(|e| self.expr(e)).collect::<R<Vec<_>>>()?;
        Ok(TypeExpr { dtype, dims, span })
    }

    fn block(&self, p: Pair<Rule>) -> R<Block> {
        let mut lets = Vec::new();
        let mut result = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::let_stmt => {
                    let mut it = q.into_inner();
                    let pattern = self.pattern(it.next().expect("grammar: pattern"));
                    let value = self.expr(it.next().expect("grammar: let value"))?;
                    lets.push(Let { pattern, value });
                }
                Rule::expr => result = Some(self.expr(q)?),
                _ => {}
            }
        }
        Ok(Block {
            lets,
            result: result.expect("grammar: block result"),
        })
    }

    fn pattern(&self, p: Pair<Rule>) -> Pattern {
        let q = p.into_inner().next().expect("grammar: pattern body");
        match q.as_rule() {
            Rule::ident => Pattern::Name(self.ident(q)),
            _ => {
                let span = self.span(&q);
                Pattern::Tuple(q.into_inner().map(|r| self.pattern(r)).collect(), span)
            }
        }
    }

    fn train(&self, p: Pair<Rule>) -> R<TrainDef> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let model = self.ident(it.next().expect("grammar: model"));
        let mut ds = it.next().expect("grammar: data spec").into_inner();
        let data = self.ident(ds.next().expect("grammar: data name"));
        let data_args = ds
            .next()
            .map(|a| self.args(a))
            .transpose()?
            .unwrap_or_default();
        let mut stmts = Vec::new();
        for q in it {
            let qspan = self.span(&q);
            match q.as_rule() {
                Rule::binding => stmts.push(TrainStmt::Set(self.binding(q)?)),
                Rule::bare_call => {
                    let mut jt = q.into_inner();
                    let name = self.ident(jt.next().expect("grammar: call name"));
                    let args = self.args(jt.next().expect("grammar: call args"))?;
                    stmts.push(TrainStmt::Call {
                        name,
                        args,
                        span: qspan,
                    });
                }
                Rule::objective => {
                    let mut jt = q.into_inner();
                    let loss = self.expr(jt.next().expect("grammar: objective"))?;
                    let mut over = Vec::new();
                    let mut with = None;
                    for r in jt {
                        match r.as_rule() {
                            Rule::over_clause => {
                                over = r.into_inner().map(|i| self.ident(i)).collect()
                            }
                            Rule::with_clause => {
                                with =
                                    Some(self.expr(r.into_inner().next().expect("grammar: with"))?)
                            }
                            _ => {}
                        }
                    }
                    stmts.push(TrainStmt::Minimize {
                        loss,
                        over,
                        with,
                        span: qspan,
                    });
                }
                _ => {}
            }
        }
        Ok(TrainDef {
            model,
            data,
            data_args,
            stmts,
            span,
        })
    }

    fn args(&self, p: Pair<Rule>) -> R<Vec<Arg>> {
        p.into_inner()
            .map(|a| {
                let mut it = a.into_inner().peekable();
                let first = it.next().expect("grammar: arg");
                if first.as_rule() == Rule::ident {
                    let value = self.expr(it.next().expect("grammar: arg value"))?;
                    Ok(Arg {
                        name: Some(self.ident(first)),
                        value,
                    })
                } else {
                    Ok(Arg {
                        name: None,
                        value: self.expr(first)?,
                    })
                }
            })
            .collect()
    }

    /// Expressions, with a bound on tree depth so later recursive walks are safe.
    fn expr(&self, p: Pair<Rule>) -> R<Expr> {
        let span = self.span(&p);
        let result: R<(Expr, usize)> = pratt()
            .map_primary(|q| self.postfix_expr(q))
            .map_prefix(|op, rhs| {
                let (rhs, d) = rhs?;
                let span = Span::new(self.span(&op).start, rhs.span.end);
                self.deep(span, d + 1)?;
                Ok((
                    Expr {
                        kind: ExprKind::Neg(Box::new(rhs)),
                        span,
                    },
                    d + 1,
                ))
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, dl) = lhs?;
                let (rhs, dr) = rhs?;
                let bop = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::matmul => BinOp::MatMul,
                    Rule::pow => BinOp::Pow,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::eq => BinOp::Eq,
                    _ => BinOp::Ne,
                };
                let span = Span::new(lhs.span.start, rhs.span.end);
                let d = dl.max(dr) + 1;
                self.deep(self.span(&op), d)?;
                Ok((
                    Expr {
                        kind: ExprKind::Binary(bop, Box::new(lhs), Box::new(rhs)),
                        span,
                    },
                    d,
                ))
            })
            .parse(p.into_inner());
        result.map(|(mut e, _)| {
            e.span = if e.span == Span::default() {
                span
            } else {
                e.span
            };
            e
        })
    }

    fn deep(&self, span: Span, depth: usize) -> R<()> {
        if depth > MAX_EXPR_DEPTH {
            Err(Diagnostic::new(
                span,
                format!("expression nested deeper than {MAX_EXPR_DEPTH} operators"),
            ))
        } else {
            Ok(())
        }
    }

    fn postfix_expr(&self, p: Pair<Rule>) -> R<(Expr, usize)> {
        let mut it = p.into_inner();
        let (mut e, mut d) = self.primary(it.next().expect("grammar: primary"))?;
        for q in it {
            let span = Span::new(e.span.start, self.span(&q).end);
            d += 1;
            self.deep(span, d)?;
            let kind = match q.as_rule() {
                Rule::call_args => ExprKind::Call(Box::new(e), self.args(q)?),
                Rule::index => {
                    let items = q
                        .into_inner()
                        .map(|i| self.index_item(i))
                        .collect::<R<Vec<_>>>()?;
                    ExprKind::Index(Box::new(e), items)
                }
                _ => ExprKind::Field(
                    Box::new(e),
                    self.ident(q.into_inner().next().expect("grammar: field")),
                ),
            };
            e = Expr { kind, span };
        }
        Ok((e, d))
    }

    fn index_item(&self, p: Pair<Rule>) -> R<IndexItem> {
        let q = p.into_inner().next().expect("grammar: index item");
        if q.as_rule() == Rule::expr {
            return Ok(IndexItem::Expr(self.expr(q)?));
        }
        let span = self.span(&q);
        let text = q.as_str();
        // Bounds in order of appearance; the colons decide which is which.
        let mut bounds: Vec<(usize, Expr)> = Vec::new();
        for b in q.into_inner() {
            let off = b.as_span().start() - (span.start - self.base);
            bounds.push((
                off,
                self.expr(b.into_inner().next().expect("grammar: bound"))?,
            ));
        }
        let colons: Vec<usize> = text
            .char_indices()
            .filter(|(_, c)| *c == ':')
            .map(|(i, _)| i)
            .collect();
        let (mut start, mut end, mut step) = (None, None, None);
        for (off, e) in bounds {
            // Colons inside the bound expressions cannot occur (no `:` in expressions).
            let slot = colons.iter().filter(|&&c| c < off).count();
            match slot {
                0 => start = Some(e),
                1 => end = Some(e),
                _ => step = Some(e),
            }
        }
        Ok(IndexItem::Slice {
            start,
            end,
            step,
            span,
        })
    }

    fn primary(&self, p: Pair<Rule>) -> R<(Expr, usize)> {
        let span = self.span(&p);
        let (kind, d) = match p.as_rule() {
            Rule::number => {
                let v: f64 = p
                    .as_str()
                    .parse()
                    .map_err(|_| Diagnostic::new(span, format!("bad number `{}`", p.as_str())))?;
                (ExprKind::Number(v), 0)
            }
            Rule::string => {
                let s = p.as_str();
                (ExprKind::Str(s[1..s.len() - 1].to_string()), 0)
            }
            Rule::ident => (ExprKind::Name(p.as_str().to_string()), 0),
            Rule::if_expr => {
                let mut it = p
                    .into_inner()
                    .filter(|q| !matches!(q.as_rule(), Rule::kw_if | Rule::kw_else));
                let cond = self.expr(it.next().expect("grammar: if condition"))?;
                let then = self.block(it.next().expect("grammar: if block"))?;
                let other = it.next().expect("grammar: else");
                let otherwise = match other.as_rule() {
                    Rule::block => self.block(other)?,
                    // `else if …`: a block whose value is the nested `if`.
                    _ => {
                        let (e, _) = self.primary(other)?;
                        Block {
                            lets: Vec::new(),
                            result: e,
                        }
                    }
                };
                (
                    ExprKind::If(Box::new(cond), Box::new(then), Box::new(otherwise)),
                    1,
                )
            }
            Rule::list => {
                let items = p
                    .into_inner()
                    .map(|e| self.expr(e))
                    .collect::<R<Vec<_>>>()?;
                (ExprKind::List(items), 1)
            }
            _ => {
                let mut items = p
                    .into_inner()
                    .map(|e| self.expr(e))
                    .collect::<R<Vec<_>>>()?;
                if items.len() == 1 {
                    let mut e = items.pop().expect("one item");
                    e.span = span;
                    return Ok((e, 1));
                }
                (ExprKind::Tuple(items), 1)
            }
        };
        Ok((Expr { kind, span }, d))
    }
}
