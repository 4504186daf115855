//! The documentation's examples stay true: every `.dl` program in `docs/language.md` and
//! `README.md` goes through `dlc check`, and every command shown with its output is run with
//! the `dlc` binary and its output compared.
//!
//! Fenced blocks, by their info string (the words after the opening fence):
//!
//! - `dl`: a complete program; `dlc check` must accept it. An untagged block whose first
//!   line that is not a comment starts with `model`, `fn` or `train` counts as `dl`.
//! - `dl fails`: a program `dlc check` must reject (with a message, without a panic).
//! - `dl fragment`: an excerpt that is not a program on its own; not checked.
//! - `file=NAME` (on a `dl` block): the block is saved as NAME for the `console` examples.
//! - `from=PATH` (on a `dl` block): each paragraph of the block (blank-line separated, with
//!   comments and blank lines ignored) appears, line for line, in PATH (from the repository
//!   root): the block is a faithful excerpt of that file.
//! - `console`: `$ dlc …` lines are run (in a folder holding the saved blocks and `models/`),
//!   and the lines up to the next `$` are their output (stdout, then stderr). `...` in the
//!   shown output matches any text, lines included. A command whose shown output contains
//!   `error:` must fail; any other must succeed.
//!
//! Other blocks (`sh`, `text`, …) are not run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// A fenced block: where it starts (1-based line of the opening fence), its info string
/// split into words, and its text (indentation of the fence removed).
struct Block {
    line: usize,
    info: Vec<String>,
    text: String,
}

impl Block {
    fn lang(&self) -> &str {
        self.info.first().map_or("", String::as_str)
    }

    fn has(&self, flag: &str) -> bool {
        self.info.iter().skip(1).any(|w| w == flag)
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.info
            .iter()
            .skip(1)
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether the block is a `.dl` program (tagged, or untagged and looking like one).
    fn is_dl(&self) -> bool {
        match self.lang() {
            "dl" => true,
            "" => self
                .text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .is_some_and(|l| {
                    ["model", "fn", "train"]
                        .iter()
                        .any(|k| l.strip_prefix(k).is_some_and(|r| r.starts_with(' ')))
                }),
            _ => false,
        }
    }
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<String>, Vec<String>)> = None;
    let mut in_comment = false;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            // An HTML comment is no code, even where its lines start with a fence.
            None if in_comment || trimmed.starts_with("<!--") => {
                in_comment = !line.contains("-->");
            }
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let words = info.split_whitespace().map(String::from).collect();
                    open = Some((i + 1, " ".repeat(indent), words, Vec::new()));
                }
            }
            Some((start, pad, info, lines)) => {
                if trimmed.starts_with("```") && trimmed.trim_end().chars().all(|c| c == '`') {
                    out.push(Block {
                        line: *start,
                        info: std::mem::take(info),
                        text: lines.join("\n") + "\n",
                    });
                    open = None;
                } else {
                    lines.push(line.strip_prefix(pad.as_str()).unwrap_or(line).to_string());
                }
            }
        }
    }
    assert!(open.is_none(), "an unclosed code fence");
    out
}

/// Lines of code with comments and trailing spaces removed, blank lines dropped.
fn code_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.find('#') {
            Some(i) => &l[..i],
            None => l,
        })
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Every paragraph of `block` appears as consecutive code lines of `file`.
fn check_excerpt(doc: &str, b: &Block, file: &str) -> Result<(), String> {
    let whole = std::fs::read_to_string(root().join(file)).map_err(|e| format!("{file}: {e}"))?;
    let lines = code_lines(&whole);
    for para in b.text.split("\n\n") {
        let want = code_lines(para);
        if want.is_empty() {
            continue;
        }
        if !lines.windows(want.len()).any(|w| w == want.as_slice()) {
            return Err(format!(
                "{doc}:{}: this part of the block is not in {file}:\n{}",
                b.line,
                want.join("\n")
            ));
        }
    }
    Ok(())
}

/// Split a command line like a shell: words, '…' and "…" quoting, `#` comments.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    cur.push(d);
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Whether `actual` matches `shown`, where `...` in `shown` matches any text.
fn matches(shown: &str, actual: &str) -> bool {
    let parts: Vec<&str> = shown.split("...").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return shown == actual;
    }
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn normalize(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_end_matches('\n').to_string()
}

/// A folder to run a document's examples in: its saved blocks, and `models/`.
fn scratch(doc: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dlc-docs-{}-{}",
        doc.replace(['/', '.'], "-"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    std::os::unix::fs::symlink(root().join("models"), d.join("models")).expect("symlink models");
    d
}

fn dlc(dir: &Path, args: &[String]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dlc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs dlc");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Check one document; returns every problem found (and how many examples were checked).
fn check_doc(doc: &str) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(root().join(doc)).expect("read the document");
    let dir = scratch(doc);
    let all = blocks(&text);
    let mut problems = Vec::new();
    let mut checked = 0;
    // Programs first: a console example may use a program shown after it.
    let mut programs = Vec::new();
    for b in all.iter().filter(|b| b.is_dl()) {
        let name = match b.attr("file") {
            Some(n) => n.to_string(),
            None => format!("{}-line-{}.dl", doc.replace(['/', '.'], "-"), b.line),
        };
        std::fs::write(dir.join(&name), &b.text).expect("write block");
        programs.push((b, name));
    }
    for (b, name) in &programs {
        if let Some(file) = b.attr("from") {
            checked += 1;
            if let Err(e) = check_excerpt(doc, b, file) {
                problems.push(e);
            }
        }
        if b.has("fragment") {
            continue;
        }
        checked += 1;
        let (ok, out, err) = dlc(&dir, &["check".into(), name.clone()]);
        let all_out = format!("{out}{err}");
        if all_out.contains("panicked") {
            problems.push(format!("{doc}:{}: dlc check panicked:\n{all_out}", b.line));
        } else if b.has("fails") {
            if ok || !err.contains(&format!("{name}:")) {
                problems.push(format!(
                    "{doc}:{}: a `dl fails` block, but dlc check says:\n{all_out}",
                    b.line
                ));
            }
        } else if !ok {
            problems.push(format!(
                "{doc}:{}: dlc check rejects this block (tag it `dl fails` or `dl fragment` \
                 if that is meant):\n{}\n{all_out}",
                b.line, b.text
            ));
        }
    }
    for b in all.iter().filter(|b| b.lang() == "console") {
        let mut commands: Vec<(String, Vec<&str>)> = Vec::new();
        for line in b.text.lines() {
            match line.strip_prefix("$ ") {
                Some(cmd) => commands.push((cmd.to_string(), Vec::new())),
                None => match commands.last_mut() {
                    Some((_, shown)) => shown.push(line),
                    None => problems.push(format!(
                        "{doc}:{}: a console block must start with a `$ ` command",
                        b.line
                    )),
                },
            }
        }
        for (cmd, shown) in commands {
            checked += 1;
            let words = shell_words(&cmd);
            if words.first().map(String::as_str) != Some("dlc") {
                problems.push(format!("{doc}:{}: not a dlc command: {cmd}", b.line));
                continue;
            }
            let (ok, out, err) = dlc(&dir, &words[1..]);
            let actual = normalize(&format!("{out}{err}"));
            let shown = normalize(&shown.join("\n"));
            let want_ok = !shown.contains("error:");
            if actual.contains("panicked") || ok != want_ok || !matches(&shown, &actual) {
                problems.push(format!(
                    "{doc}:{}: `{cmd}` ({}) printed:\n{actual}\n--- the document shows:\n{shown}",
                    b.line,
                    if ok { "succeeded" } else { "failed" }
                ));
            }
        }
    }
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (problems, checked)
}

fn assert_doc(doc: &str, at_least: usize) {
    let (problems, checked) = check_doc(doc);
    assert!(
        problems.is_empty(),
        "{} problem(s) in {doc} (conventions: runtime/tests/docs.rs):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    assert!(
        checked >= at_least,
        "only {checked} examples of {doc} checked; are its blocks tagged?"
    );
}

#[test]
fn language_reference_examples_are_true() {
    assert_doc("docs/language.md", 20);
}

#[test]
fn readme_examples_are_true() {
    assert_doc("README.md", 2);
}

#[test]
fn the_checker_itself() {
    assert!(matches("a ... c", "a b c"));
    assert!(matches("x\n...\ny", "x\n1\n2\ny"));
    assert!(matches("[[0.0024...]]", "[[0.0024726]]"));
    assert!(!matches("a ... c", "a b d"));
    assert!(!matches("abc", "abcd"));
    assert_eq!(
        shell_words(r#"dlc run f.dl --input 'x=[[-1, 2]]'   # σ"#),
        ["dlc", "run", "f.dl", "--input", "x=[[-1, 2]]"]
    );
    let md = "text\n```dl fails file=a.dl\nmodel A {}\n```\n  ```\n  model B {}\n  ```\n<!--\n```dl\n-->\n```sh\nls\n```\n";
    let bs = blocks(md);
    assert_eq!(bs.len(), 3);
    assert!(bs[0].is_dl() && bs[0].has("fails") && bs[0].attr("file") == Some("a.dl"));
    assert!(bs[1].is_dl() && bs[1].text == "model B {}\n" && bs[1].line == 5);
    assert!(!bs[2].is_dl());
}
