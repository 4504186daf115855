//! `--set NAME=VALUE` and `--data-arg NAME=VALUE` on every command that reads a model
//! file, their record in checkpoints and metrics lines, and the `songs` data set
//! (character-level text) trained end to end on a small generated corpus.

mod common;
use common::{dlc, fails, metrics, root, s, text};

use dlc_runtime::checkpoint::{Checkpoint, read_vocabulary};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Runs dlc, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = dlc(args);
    assert!(o.status.success(), "dlc {args:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A fresh folder for one test.
fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dlc-flags-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn run_json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("json output")
}

#[test]
fn set_replaces_defaults_with_numbers_names_and_strings() {
    let d = dir("values");
    let file = d.join("act.dl");
    std::fs::write(
        &file,
        "model A(act: relu, scale: 1) {\n  fn forward(x: f32[B, 2]) { act(x) * scale }\n}\n",
    )
    .expect("write");
    let f = s(&file);
    let input = "x=[[-1,2]]";
    assert_eq!(run_json(&["run", f, "--input", input]), json!([[0.0, 2.0]]));
    assert_eq!(
        run_json(&["run", f, "--input", input, "--set", "scale=0.5"]),
        json!([[0.0, 1.0]])
    );
    // A name of the language: tanh.
    let t = run_json(&[
        "run", f, "--input", input, "--set", "act=tanh", "--set", "scale=-2",
    ]);
    let got: Vec<f64> = t[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want = [-2.0 * (-1f64).tanh(), -2.0 * 2f64.tanh()];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // A string: the padding of a convolution; "same" keeps the 3x3 input size.
    let conv = d.join("conv.dl");
    std::fs::write(
        &conv,
        "model C(pad: \"valid\") {\n  c = Conv2D(1, 1, 3, padding: pad, init: ones)\n  fn forward(x: f32[B, 3, 3, 1]) { c(x) }\n}\n",
    )
    .expect("write");
    let x = "x=[[[[1],[1],[1]],[[1],[1],[1]],[[1],[1],[1]]]]";
    assert_eq!(
        run_json(&["run", s(&conv), "--input", x]),
        json!([[[[9.0]]]])
    );
    let same = run_json(&["run", s(&conv), "--input", x, "--set", "pad=same"]);
    assert_eq!(same[0].as_array().unwrap().len(), 3, "{same}");
    assert_eq!(same[0][1][1][0], json!(9.0));
    assert_eq!(same[0][0][0][0], json!(4.0));
    let quoted = run_json(&["run", s(&conv), "--input", x, "--set", "pad=\"same\""]);
    assert_eq!(quoted, same);
    // A value that does not fit is reported where it is used, with the --set named.
    let err = fails(&["run", f, "--input", input, "--set", "act=3"]);
    assert!(err.contains("--set act=3"), "{err}");
}

#[test]
fn set_errors_name_the_model_parameters() {
    for cmd in [
        vec!["check", "models/mlp.dl"],
        vec!["compile", "models/mlp.dl"],
        vec!["train", "models/mlp.dl", "--epochs", "1"],
        vec!["bench", "models/mlp.dl", "--steps", "1", "--repeats", "1"],
        vec!["run", "models/perceptron.dl", "--input", "x=[[1,2]]"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--set", "hiden=3"]);
        let err = fails(&args);
        if cmd[1] == "models/mlp.dl" {
            assert!(
                err.contains("--set hiden=3: model `Mlp` has no parameter `hiden`; did you mean `hidden`? (its parameters: height, width, classes, hidden)"),
                "{cmd:?}: {err}"
            );
        } else {
            assert!(err.contains("has no parameter `hiden`"), "{cmd:?}: {err}");
        }
    }
    let err = fails(&["check", "models/mlp.dl", "--set", "hidden"]);
    assert!(err.contains("expected NAME=VALUE"), "{err}");
    let err = fails(&[
        "check",
        "models/mlp.dl",
        "--set",
        "hidden=1",
        "--set",
        "hidden=2",
    ]);
    assert!(err.contains("--set hidden=… given more than once"), "{err}");
    // A data-set size can be replaced too; here it then contradicts the data.
    let err = fails(&["check", "models/mlp.dl", "--set", "height=7"]);
    assert!(err.contains("--set height=7"), "{err}");
    ok(&["check", "models/mlp.dl", "--set", "hidden=7"]);
    let out = ok(&["compile", "models/mlp.dl", "--set", "hidden=7"]);
    assert!(out.contains("f32[64,7]"), "{out}");
}

#[test]
fn data_arg_errors_name_the_data_set() {
    let err = fails(&["train", "models/mlp.dl", "--data-arg", "seq=3"]);
    assert!(
        err.contains("data set `digits` takes no arguments (got `seq`)"),
        "{err}"
    );
    let err = fails(&["check", "models/mlp.dl", "--data-arg", "seq=3"]);
    assert!(err.contains("takes no arguments"), "{err}");
    let err = fails(&["check", "models/perceptron.dl", "--data-arg", "seq=3"]);
    assert!(err.contains("no training section"), "{err}");
    // Written in the file: reported at the data set's name.
    let d = dir("dataargs");
    let file = d.join("m.dl");
    let mlp = std::fs::read_to_string(root().join("models/mlp.dl")).expect("mlp");
    std::fs::write(&file, mlp.replace("on digits {", "on digits(seq: 4) {")).expect("write");
    let err = fails(&["check", s(&file)]);
    assert!(
        err.contains("m.dl:") && err.contains("data set `digits` takes no arguments"),
        "{err}"
    );
}

#[test]
fn set_is_recorded_in_the_checkpoint_and_applied_on_load() {
    let d = dir("roundtrip");
    let p = |n: &str| d.join(n).display().to_string();
    ok(&[
        "train",
        "models/mlp.dl",
        "--set",
        "hidden=16",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--save",
        &p("a.st"),
        "--metrics",
        &p("a.jsonl"),
    ]);
    let ck = Checkpoint::load(Path::new(&p("a.st"))).expect("checkpoint");
    assert_eq!(ck.tensors["dense1.w"].shape(), &[64, 16]);
    assert_eq!(ck.meta["set"], r#"{"hidden":"16"}"#);
    assert_eq!(ck.meta["data_args"], "{}");
    assert!(read_vocabulary(Path::new(&p("a.st"))).unwrap().is_none());
    let a = metrics(Path::new(&p("a.jsonl")));
    assert_eq!(a.len(), 2);
    for line in &a {
        assert_eq!(line["data_args"], json!({}), "{line}");
    }

    // eval without --set: the recorded value applies, and the figures are training's.
    ok(&[
        "eval",
        "models/mlp.dl",
        "--load",
        &p("a.st"),
        "--metrics",
        &p("e.jsonl"),
    ]);
    let e = metrics(Path::new(&p("e.jsonl")));
    assert_eq!(e[0]["test_acc"], a[1]["test_acc"]);
    assert_eq!(e[0]["test_loss"], a[1]["test_loss"]);
    assert_eq!(e[0]["data_args"], json!({}));
    // run without --set loads it too.
    let x = format!(
        "x={}",
        serde_json::to_string(&vec![vec![vec![0.5; 8]; 8]]).unwrap()
    );
    let out = run_json(&["run", "models/mlp.dl", "--load", &p("a.st"), "--input", &x]);
    assert_eq!(out[0].as_array().unwrap().len(), 10);

    // A contradicting --set is a clear error naming both.
    let a_st = p("a.st");
    for cmd in ["eval", "run"] {
        let mut args = vec![cmd, "models/mlp.dl", "--load", &a_st, "--set", "hidden=32"];
        if cmd == "run" {
            args.extend(["--input", x.as_str()]);
        }
        let err = fails(&args);
        let named = err.contains("`dense1.w` has shape [64, 16], the model needs [64, 32]")
            || err.contains("`dense1.b` has shape [16], the model needs [32]");
        assert!(named && err.contains("--set hidden=32"), "{cmd}: {err}");
    }
    let err = fails(&[
        "eval",
        "models/mlp.dl",
        "--load",
        &p("a.st"),
        "--set",
        "hidden=32",
    ]);
    assert!(
        err.contains(
            "the checkpoint was trained with --set hidden=16; this run has --set hidden=32"
        ),
        "{err}"
    );
    // Given again with the same value: fine.
    ok(&[
        "eval",
        "models/mlp.dl",
        "--load",
        &p("a.st"),
        "--set",
        "hidden=16",
    ]);

    // Resume without --set continues the run trained with it, bit for bit.
    ok(&[
        "train",
        "models/mlp.dl",
        "--set",
        "hidden=16",
        "--epochs",
        "1",
        "--seed",
        "3",
        "--save",
        &p("b.st"),
    ]);
    ok(&[
        "train",
        "models/mlp.dl",
        "--epochs",
        "2",
        "--resume",
        &p("b.st"),
        "--metrics",
        &p("b.jsonl"),
        "--save",
        &p("b.st"),
    ]);
    let b = metrics(Path::new(&p("b.jsonl")));
    assert_eq!(b[0]["train_loss"], a[1]["train_loss"]);
    assert_eq!(b[0]["test_acc"], a[1]["test_acc"]);
    let ck = Checkpoint::load(Path::new(&p("b.st"))).expect("checkpoint");
    assert_eq!(
        ck.meta["set"], r#"{"hidden":"16"}"#,
        "the resumed run records it again"
    );
}

/// `n` tunes of a few lines each. Each repeats one of four patterns whose characters
/// always follow each other in the same order (so the next character is mostly
/// predictable from the current one), chosen by `i % 4` so that the test tunes (every
/// 5th) use all four.
fn corpus(n: usize) -> String {
    let tunes: Vec<String> = (0..n)
        .map(|i| {
            let notes = ["abc", "def", "gh", "ijkl"][i % 4];
            format!(
                "X:{i}\nT:Tune {i}\nK:D\n|{}|\n|{}|",
                notes.repeat(12),
                notes.repeat(8)
            )
        })
        .collect();
    tunes.join("\n\n") + "\n"
}

const BIGRAM: &str = "model Bigram(vocab, dim: 8) {
  embed = Embedding(vocab, dim)
  out = Dense(dim, vocab)
  fn forward(x: i32[B, T]) -> f32[B, T, vocab] { out(embed(x)) }
}

train Bigram on songs(seq: 20) {
  loss = softmax_cross_entropy(forward(x), y)
  optimizer = adam(lr: 0.05)
  batch = 16
  epochs = 3
}
";

#[test]
fn songs_train_eval_and_data_args() {
    let d = dir("songs");
    let p = |n: &str| d.join(n).display().to_string();
    let mut want: Vec<char> = corpus(60).chars().collect();
    want.sort_unstable();
    want.dedup();
    std::fs::write(d.join("tunes.abc"), corpus(60)).expect("write");
    std::fs::write(d.join("bigram.dl"), BIGRAM).expect("write");
    let data = format!("songs={}", p("tunes.abc"));
    let model = p("bigram.dl");

    // Without a file, the vocabulary is unknown.
    let err = fails(&["check", &model]);
    assert!(err.contains("--data songs=PATH"), "{err}");
    ok(&["check", &model, "--data", &data]);

    let out = ok(&[
        "train",
        &model,
        "--data",
        &data,
        "--seed",
        "2",
        "--save",
        &p("a.st"),
        "--metrics",
        &p("a.jsonl"),
    ]);
    assert!(out.contains("training Bigram on songs"), "{out}");
    let a = metrics(Path::new(&p("a.jsonl")));
    assert_eq!(a.len(), 3);
    for line in &a {
        assert_eq!(line["data_args"], json!({"seq": 20}), "{line}");
        let acc = line["test_acc"].as_f64().expect("per-position accuracy");
        assert!((0.0..=1.0).contains(&acc), "{line}");
    }
    let (first, last) = (&a[0], &a[2]);
    assert!(last["train_loss"].as_f64() < first["train_loss"].as_f64());
    // The tunes repeat patterns: a bigram model predicts most next characters, and its
    // loss is far below a uniform guess's, ln(vocab).
    // (Seed 2 gives 0.81 and 0.57 against ln(30) = 3.4.)
    assert!(last["test_acc"].as_f64().unwrap() > 0.7, "{last}");
    assert!(last["test_loss"].as_f64().unwrap() < 1.0, "{last}");
    // 205 training windows in batches of 16: 12 full batches and the last partial one.
    assert_eq!(first["step"], 13);

    // The checkpoint carries the vocabulary and the arguments.
    let vocab = read_vocabulary(Path::new(&p("a.st")))
        .expect("readable")
        .expect("a vocabulary");
    assert_eq!(vocab, want);
    let ck = Checkpoint::load(Path::new(&p("a.st"))).expect("checkpoint");
    assert_eq!(ck.meta["data_args"], r#"{"seq":20}"#);
    assert_eq!(ck.tensors["embed.table"].shape(), &[vocab.len(), 8]);

    // eval gives training's figures.
    ok(&[
        "eval",
        &model,
        "--data",
        &data,
        "--load",
        &p("a.st"),
        "--metrics",
        &p("e.jsonl"),
    ]);
    let e = metrics(Path::new(&p("e.jsonl")));
    assert_eq!(e[0]["test_loss"], last["test_loss"]);
    assert_eq!(e[0]["test_acc"], last["test_acc"]);

    // --data-arg overrides the file's seq, and is recorded and applied on load.
    ok(&[
        "train",
        &model,
        "--data",
        &data,
        "--data-arg",
        "seq=10",
        "--epochs",
        "1",
        "--save",
        &p("b.st"),
        "--metrics",
        &p("b.jsonl"),
    ]);
    assert_eq!(
        metrics(Path::new(&p("b.jsonl")))[0]["data_args"],
        json!({"seq": 10})
    );
    let ck = Checkpoint::load(Path::new(&p("b.st"))).expect("checkpoint");
    assert_eq!(ck.meta["data_arg"], r#"{"seq":"10"}"#);
    ok(&[
        "eval",
        &model,
        "--data",
        &data,
        "--load",
        &p("b.st"),
        "--metrics",
        &p("f.jsonl"),
    ]);
    assert_eq!(
        metrics(Path::new(&p("f.jsonl")))[0]["data_args"],
        json!({"seq": 10})
    );
    ok(&[
        "eval",
        &model,
        "--data",
        &data,
        "--load",
        &p("b.st"),
        "--data-arg",
        "seq=5",
        "--metrics",
        &p("g.jsonl"),
    ]);
    assert_eq!(
        metrics(Path::new(&p("g.jsonl")))[0]["data_args"],
        json!({"seq": 5})
    );

    // run takes the vocabulary from the checkpoint alone: no --data needed.
    let out = run_json(&[
        "run",
        &model,
        "--load",
        &p("a.st"),
        "--input",
        "x=[[0,1,2]]",
    ]);
    assert_eq!(out[0].as_array().unwrap().len(), 3);
    assert_eq!(out[0][0].as_array().unwrap().len(), vocab.len());

    let err = fails(&["train", &model, "--data", &data, "--data-arg", "window=3"]);
    assert!(
        err.contains("data set `songs` has no argument `window`; its arguments: seq"),
        "{err}"
    );
    let err = fails(&["train", &model, "--data", &data, "--data-arg", "seq=0"]);
    assert!(err.contains("seq must be a whole number"), "{err}");
    // Another text: another vocabulary, refused by eval.
    std::fs::write(d.join("other.abc"), corpus(60).replace('a', "z")).expect("write");
    let err = fails(&[
        "eval",
        &model,
        "--data",
        &format!("songs={}", p("other.abc")),
        "--load",
        &p("a.st"),
    ]);
    assert!(err.contains("vocabulary"), "{err}");
    let bad = d.join("bad.abc");
    std::fs::write(&bad, b"X:1\n\xff\xfe\n").expect("write");
    let err = fails(&["train", &model, "--data", &format!("songs={}", s(&bad))]);
    assert!(
        err.contains("bad.abc") && err.contains("not UTF-8") && err.contains("offset 4"),
        "{err}"
    );
    let empty = d.join("empty.abc");
    std::fs::write(&empty, b"").expect("write");
    let err = fails(&["train", &model, "--data", &format!("songs={}", s(&empty))]);
    assert!(
        err.contains("empty.abc") && err.contains("empty file"),
        "{err}"
    );
}
