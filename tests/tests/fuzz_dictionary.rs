//! The fuzz targets' dictionary of the language (`fuzz/dl.dict`, libFuzzer's format) names
//! every literal of the grammar, every builtin and every model and function of the
//! prelude, so that it keeps up with the language.

use std::collections::HashSet;

/// The entries of a libFuzzer dictionary: `"…"` or `name="…"` lines, with `\\`, `\"` and
/// `\xAB` escapes.
fn entries(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let quoted = &line[line.find('"').expect("a quoted entry")..];
        assert!(quoted.len() >= 2 && quoted.ends_with('"'), "{line}");
        let body = &quoted[1..quoted.len() - 1];
        let mut s = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                s.push(c);
                continue;
            }
            match chars.next() {
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    s.push(u8::from_str_radix(&hex, 16).expect("\\xAB") as char);
                }
                Some(c @ ('\\' | '"')) => s.push(c),
                other => panic!("{line}: escape \\{other:?}"),
            }
        }
        out.insert(s);
    }
    out
}

/// The string literals of a pest grammar (without whitespace, escapes, and the whitespace
/// and comment rules').
fn grammar_literals(grammar: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in grammar.lines() {
        let code = line.split("//").next().unwrap_or("");
        if code.starts_with("WHITESPACE") || code.starts_with("COMMENT") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find('"') {
            let after = &rest[i + 1..];
            let mut end = 0;
            let mut escaped = false;
            for (j, c) in after.char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = j;
                    break;
                }
            }
            let lit = &after[..end];
            if !lit.starts_with('\\') && !lit.trim().is_empty() {
                out.push(lit.to_string());
            }
            rest = &after[end + 1..];
        }
    }
    out
}

#[test]
fn the_fuzz_dictionary_names_the_whole_language() {
    let root = dlc_tests::root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let dict = entries(&read("fuzz/dl.dict"));
    let mut missing = Vec::new();
    let literals = grammar_literals(&read("dsl/src/grammar.pest"));
    for kw in [
        "model", "fn", "train", "import", "let", "minimize", "->", "**",
    ] {
        assert!(literals.iter().any(|l| l == kw), "the grammar's {kw}");
    }
    missing.extend(literals.into_iter().filter(|l| !dict.contains(l)));
    missing.extend(
        dlc_compiler::lower::BUILTINS
            .iter()
            .map(|b| b.to_string())
            .filter(|b| !dict.contains(b)),
    );
    let prelude = read("dsl/src/prelude.dl");
    let mut defined = 0;
    for line in prelude.lines() {
        let Some(rest) = line
            .strip_prefix("model ")
            .or_else(|| line.strip_prefix("fn "))
        else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        defined += 1;
        if !dict.contains(&name) {
            missing.push(name);
        }
    }
    assert!(defined >= 10, "{defined} prelude definitions");
    assert!(missing.is_empty(), "fuzz/dl.dict lacks {missing:?}");
}
