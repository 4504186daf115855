//! Helpers the `dlc` binary's tests share: run it from the repository's root, read what it
//! printed and wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// Runs dlc. How long it takes is not checked here (a loaded machine is no bug); the
/// benchmarks measure time.
pub fn dlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("runs dlc")
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs dlc, expects success, returns stdout and stderr.
pub fn ok(args: &[&str]) -> String {
    let o = dlc(args);
    let all = text(&o);
    assert!(o.status.success(), "dlc {args:?} failed:\n{all}");
    all
}

/// Runs dlc, expects failure without a panic, returns stderr.
pub fn fails(args: &[&str]) -> String {
    let o = dlc(args);
    let all = text(&o);
    assert!(!o.status.success(), "dlc {args:?} succeeded:\n{all}");
    assert!(
        !all.contains("panicked") && !all.contains("RUST_BACKTRACE"),
        "dlc {args:?} panicked:\n{all}"
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A file in this test binary's own temporary folder.
pub fn tmp(name: &str, contents: &[u8]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    let dir = std::env::temp_dir().join(format!("dlc-{stem}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write");
    p
}

/// The lines of a metrics file.
pub fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("metrics file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs dlc (with the environment variable `stall` set, where it stops and waits), sends it
/// SIGINT once it has printed a line starting with `marker`, and returns its exit status
/// and everything it printed.
pub fn interrupt_at(
    args: &[&str],
    stall: Option<(&str, &str)>,
    marker: &str,
) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlc"));
    if let Some((k, v)) = stall {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns dlc");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut printed = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("reads stdout");
        assert!(n > 0, "dlc ended before it stalled:\n{printed}");
        printed.push_str(&line);
        if line.starts_with(marker) {
            break;
        }
    }
    // SAFETY: sends a signal to the child process, which is still running.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    out.read_to_string(&mut printed).expect("reads stdout");
    let o = child.wait_with_output().expect("waits for dlc");
    printed.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.code(), printed)
}
