//! The grammar: every construct parses into the expected tree; precedence; recovery;
//! limits.

use dlc_dsl::ast::*;
use dlc_dsl::parse_file;

fn one_expr(src: &str) -> Expr {
    let (f, d) = parse_file(&format!("fn f() {{ {src} }}"));
    assert!(d.is_empty(), "{src}: {d:?}");
    let Item::Fn(f) = &f.items[0] else {
        panic!("a fn")
    };
    f.body.result.clone()
}

/// A compact s-expression of an expression tree.
fn sexp(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number(v) => format!("{v}"),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(xs) => format!("[{}]", xs.iter().map(sexp).collect::<Vec<_>>().join(" ")),
        ExprKind::Tuple(xs) => format!(
            "(tuple {})",
            xs.iter().map(sexp).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Neg(x) => format!("(neg {})", sexp(x)),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), sexp(a), sexp(b)),
        ExprKind::Call(f, args) => {
            let a: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}:{}", n.name, sexp(&a.value)),
                    None => sexp(&a.value),
                })
                .collect();
            format!("(call {} {})", sexp(f), a.join(" "))
        }
        ExprKind::Index(b, items) => {
            let its: Vec<String> = items
                .iter()
                .map(|i| match i {
                    IndexItem::Expr(e) => sexp(e),
                    IndexItem::Slice {
                        start, end, step, ..
                    } => format!(
                        "{}:{}:{}",
                        start.as_ref().map(sexp).unwrap_or_default(),
                        end.as_ref().map(sexp).unwrap_or_default(),
                        step.as_ref().map(sexp).unwrap_or_default()
                    ),
                })
                .collect();
            format!("(index {} {})", sexp(b), its.join(" "))
        }
        ExprKind::Field(b, f) => format!("(. {} {})", sexp(b), f.name),
        ExprKind::If(c, t, o) => {
            let block = |b: &Block| {
                let lets: Vec<String> = b
                    .lets
                    .iter()
                    .map(|l| match &l.pattern {
                        Pattern::Name(n) => format!("(let {} {}) ", n.name, sexp(&l.value)),
                        Pattern::Tuple(..) => "(let tuple) ".to_string(),
                    })
                    .collect();
                format!("{{{}{}}}", lets.concat(), sexp(&b.result))
            };
            format!("(if {} {} {})", sexp(c), block(t), block(o))
        }
    }
}

#[test]
fn precedence_and_associativity() {
    for (src, want) in [
        ("a + b * c", "(+ a (* b c))"),
        ("a @ b + c", "(+ (@ a b) c)"),
        ("a - b - c", "(- (- a b) c)"),
        ("-x ** 2", "(neg (** x 2))"),
        ("a ** b ** c", "(** a (** b c))"),
        ("a < b + 1", "(< a (+ b 1))"),
        ("(a + b) * c", "(* (+ a b) c)"),
        ("f(x)(y).z", "(. (call (call f x) y) z)"),
        ("1 - -2", "(- 1 (neg 2))"),
        ("2 * -x", "(* 2 (neg x))"),
    ] {
        assert_eq!(sexp(&one_expr(src)), want, "{src}");
    }
}

#[test]
fn calls_indexing_literals() {
    for (src, want) in [
        (
            "adam(lr: 1e-3, beta1: 0.9)",
            "(call adam lr:0.001 beta1:0.9)",
        ),
        ("x[:, 1:3, ::2, -1]", "(index x :: 1:3: ::2 (neg 1))"),
        ("zeros[B, 10]", "(index zeros B 10)"),
        ("[[1, 2], [3, 4]]", "[[1 2] [3 4]]"),
        ("(a, b)", "(tuple a b)"),
        ("songs(path: \"x.abc\")", "(call songs path:\"x.abc\")"),
        ("1.5e2 + .5", "(+ 150 0.5)"),
        (
            "if n >= 2 { let h = f(x) g(h) } else { x }",
            "(if (>= n 2) {(let h (call f x)) (call g h)} {x})",
        ),
        (
            "f(if a == 1 { b } else if a == 2 { c } else { d }) * 2",
            "(* (call f (if (== a 1) {b} {(if (== a 2) {c} {d})})) 2)",
        ),
        // Names that start with the keywords are names.
        (
            "if if_a { elsewhere } else { ifx }",
            "(if if_a {elsewhere} {ifx})",
        ),
    ] {
        assert_eq!(sexp(&one_expr(src)), want, "{src}");
    }
}

#[test]
fn items_and_training_sections() {
    let src = r#"
# comment
model G(z_dim: 100) {
  d = Dense(z_dim, 784)   # trailing comment
  fn forward(z: f32[B, z_dim]) -> f32[B, 784] {
    let (h, _c) = split(z)
    sigmoid(d(h))
  }
}
fn helper(a, b) { a + b }
train G on mnist(seq: 100) {
  z = normal[B, 100]
  minimize bce(D(G(z)), ones) over G, D with adam(2e-4)
  batch = 64  epochs = 5
  early_stopping(patience: 2)
}
"#;
    let (f, d) = parse_file(src);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(f.items.len(), 3);
    let Item::Model(m) = &f.items[0] else {
        panic!("model")
    };
    assert_eq!(m.name.name, "G");
    assert_eq!(m.params[0].name.name, "z_dim");
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.fns[0].params[0].ty.as_ref().expect("typed").dims.len(), 2);
    assert!(matches!(&m.fns[0].body.lets[0].pattern, Pattern::Tuple(ps, _) if ps.len() == 2));
    let Item::Train(t) = &f.items[2] else {
        panic!("train")
    };
    assert_eq!(
        (t.model.name.as_str(), t.data.name.as_str()),
        ("G", "mnist")
    );
    assert_eq!(t.data_args.len(), 1);
    assert_eq!(t.stmts.len(), 5);
    assert!(
        matches!(&t.stmts[1], TrainStmt::Minimize { over, with: Some(_), .. } if over.len() == 2)
    );
    assert!(matches!(&t.stmts[4], TrainStmt::Call { name, .. } if name.name == "early_stopping"));
}

#[test]
fn one_syntax_error_per_item_and_the_rest_still_parses() {
    let src = "model A {\n  x = 1 +\n}\nmodel B { fn forward(x) { x } }\nmodel C {\n  y = ) \n}\n";
    let (f, d) = parse_file(src);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(f.items.len(), 1);
    assert_eq!(f.items[0].name().expect("named").name, "B");
    let src = dlc_dsl::Source::new("t.dl", src);
    assert_eq!(src.line_col(d[0].span.start), (3, 1));
    assert_eq!(src.line_col(d[1].span.start), (6, 7));
}

#[test]
fn limits() {
    // N ifs chained: N − 1 `else if`s.
    let chain = format!(
        "fn f(a) {{ {}{{ 0 }} }}",
        "if a == 1 { 1 } else ".repeat(66)
    );
    let (_, d) = parse_file(&chain);
    assert!(
        d.len() == 1 && d[0].message.contains("more than 64 `else if` in one item"),
        "{d:?}"
    );
    let chain = format!(
        "fn f(a) {{ {}{{ 0 }} }}",
        "if a == 1 { 1 } else ".repeat(65)
    );
    assert!(parse_file(&chain).1.is_empty());
    let deep = format!("fn f() {{ {}1{} }}", "(".repeat(100), ")".repeat(100));
    let (_, d) = parse_file(&deep);
    assert!(d[0].message.contains("nested deeper than 64"), "{d:?}");
    let long = format!("fn f() {{ 1{} }}", " + 1".repeat(1000));
    let (_, d) = parse_file(&long);
    assert!(d[0].message.contains("deeper than 256"), "{d:?}");
    let ok = format!("fn f() {{ 1{} }}", " + 1".repeat(200));
    assert!(parse_file(&ok).1.is_empty());
    assert!(dlc_dsl::check_text(&vec![b' '; (1 << 20) + 1]).is_err());
    assert!(dlc_dsl::check_text(b"model \xff").is_err());
    assert!(dlc_dsl::check_text(b"model \0").is_err());
}

#[test]
fn prelude_parses() {
    let (f, d) = parse_file(dlc_dsl::PRELUDE);
    assert!(d.is_empty(), "{d:?}");
    assert!(
        f.items
            .iter()
            .any(|i| i.name().is_some_and(|n| n.name == "Dense"))
    );
}

#[test]
fn fn_at_column_zero_inside_a_model_stays_in_it() {
    let src = "model A {\n  w = 1\nfn forward(x) { x }\n}\nfn g(a) { a }\n";
    let (f, d) = parse_file(src);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(f.items.len(), 2);
    let Item::Model(m) = &f.items[0] else {
        panic!("model")
    };
    assert_eq!(m.fns.len(), 1);
}

#[test]
fn import_is_an_item_with_its_path() {
    let (f, d) = dlc_dsl::parse_file("import \"cnn.dl\"\n\nmodel M {\n  fn forward(x) { x }\n}\n");
    assert!(d.is_empty(), "{d:?}");
    assert!(matches!(&f.items[0], dlc_dsl::ast::Item::Import(i) if i.path == "cnn.dl"));
    assert!(f.items[0].name().is_none());
}

/// A whole function body: its `let`s (pattern text, value) and its result, as s-expressions.
fn body(src: &str) -> (Vec<String>, String) {
    let (f, d) = parse_file(src);
    assert!(d.is_empty(), "{src}: {d:?}");
    let Item::Fn(f) = &f.items[0] else {
        panic!("a fn")
    };
    let lets = f.body.lets.iter().map(|l| sexp(&l.value)).collect();
    (lets, sexp(&f.body.result))
}

#[test]
fn a_line_starting_with_a_bracket_starts_a_new_expression() {
    // The LSTM-style cell: `(h2, h2)` is the result, not a call of `c`.
    let cell = "fn step(h: f32[B, 4], c: f32[B, 4]) {
  let f = sigmoid(h)
  let h2 = (1 - f) * h + f * c
  (h2, h2)
}
";
    let (lets, result) = body(cell);
    assert_eq!(
        lets,
        ["(call sigmoid h)", "(+ (* (- 1 f) h) (* f c))"],
        "{cell}"
    );
    assert_eq!(result, "(tuple h2 h2)");
    // The same for `[`: a list, not an index of `x`.
    let (lets, result) = body("fn g(x) {\n  let a = x\n  [a, a]\n}\n");
    assert_eq!((lets, result.as_str()), (vec!["x".to_string()], "[a a]"));
    // `f` then `(x)`: two expressions, the second the block's result. Likewise across a
    // comment, a blank line, and with CRLF line ends.
    for src in [
        "fn g(x) {\n  let a = f\n  (x)\n}\n",
        "fn g(x) {\n  let a = f  # a comment\n\n  (x)\n}\n",
        "fn g(x) {\r\n  let a = f\r\n  (x)\r\n}\r\n",
    ] {
        assert_eq!(
            body(src),
            (vec!["f".to_string()], "x".to_string()),
            "{src:?}"
        );
    }
    let (lets, result) = body("fn g(x) {\n  let a = f\n  [1]\n}\n");
    assert_eq!((lets, result.as_str()), (vec!["f".to_string()], "[1]"));
}

#[test]
fn brackets_on_the_same_line_still_call_and_index() {
    for (src, want) in [
        ("f (x)", "(call f x)"),
        ("f\t[1]", "(index f 1)"),
        ("f(\n  x,\n  y\n)", "(call f x y)"),
        ("f(x,\n  y)", "(call f x y)"),
        ("f(x\n)(y\n)", "(call (call f x) y)"),
        ("x[\n  1,\n  ::2\n]", "(index x 1 ::2)"),
        (
            "g(f(\n  x), [\n  1])[0]",
            "(index (call g (call f x) [1]) 0)",
        ),
        (
            "adam(\n  lr: 1e-3,  # a comment\n  beta1: 0.9,\n)",
            "(call adam lr:0.001 beta1:0.9)",
        ),
        ("(\n  a,\n  b\n)", "(tuple a b)"),
        ("f(x,\r\n  y)", "(call f x y)"),
    ] {
        assert_eq!(sexp(&one_expr(src)), want, "{src:?}");
    }
}

#[test]
fn operators_and_fields_still_continue_a_line() {
    for (src, want) in [
        // An operator at the end of a line, or at the start of the next, continues it.
        ("a +\n  b", "(+ a b)"),
        ("a\n  - b", "(- a b)"),
        ("a @\n  w", "(@ a w)"),
        // `.` may start a line: a method chain.
        ("x\n  .foo", "(. x foo)"),
        (
            "x  # a comment\n  .foo(1)\n  .bar[0]",
            "(index (. (call (. x foo) 1) bar) 0)",
        ),
    ] {
        assert_eq!(sexp(&one_expr(src)), want, "{src:?}");
    }
    // The calls of a training section keep their `(` on the line of the name too.
    let (f, d) = parse_file("train M on d(a: 1) {\n  early_stopping (patience: 2)\n}\n");
    assert!(d.is_empty(), "{d:?}");
    let Item::Train(t) = &f.items[0] else {
        panic!("train")
    };
    assert_eq!((t.data_args.len(), t.stmts.len()), (1, 1));
}

#[test]
fn a_split_call_that_breaks_the_parse_is_explained() {
    let at = |src: &str, offset: usize| dlc_dsl::Source::new("t.dl", src).line_col(offset);
    // `(x)` is the result, so the `let` after it is an error; the note says why.
    let src = "fn g(x) {\n  let a = f\n  (x)\n  let b = a\n  b\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(at(src, d[0].span.start), (4, 3));
    assert_eq!(d[0].message, "syntax error: expected `.` or an operator");
    assert_eq!(
        d[0].notes,
        [
            "line 3 starts with `(`, so it begins a new expression rather than calling the end of \
          line 2 (a call's `(` must be on the line of what it calls)"
        ]
    );
    // In a model, the `(` line is not a member. Lines count from the top of the file.
    let src = "fn h(x) { x }\n\nmodel A {\n  x = f\n  [0]\n  fn forward(x) { x }\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(at(src, d[0].span.start), (5, 3));
    assert!(
        d[0].notes[0].starts_with("line 5 starts with `[`, so it begins a new expression rather than indexing the end of line 4"),
        "{d:?}"
    );
    // Inside brackets too: a new expression where a `,` or `)` is due.
    let src = "fn g(x) {\n  f(x\n    (y))\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(at(src, d[0].span.start), (3, 5));
    assert_eq!(d[0].notes.len(), 1, "{d:?}");
    // A training-section call: the error is where the `(` belongs.
    let src = "train M on d {\n  early_stopping\n  (patience: 2)\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(at(src, d[0].span.start), (2, 17));
    assert_eq!(d[0].message, "syntax error: expected `(`");
    // An error the line split does not explain gets no note.
    let src = "fn g(h, c) {\n  let h2 = h * c\n  (h2, h2) x\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(at(src, d[0].span.start), (3, 12));
    assert!(d[0].notes.is_empty(), "{d:?}");
    let src = "fn g(h, c) {\n  let h2 = h * c\n  (h2, h2)\n  let z = * 2\n  z\n}\n";
    let (_, d) = parse_file(src);
    assert_eq!(at(src, d[0].span.start), (4, 3));
    assert!(d[0].notes.is_empty(), "{d:?}");
}
