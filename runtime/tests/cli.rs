//! The `dlc` binary on good and bad input: every bad input exits non-zero with a message
//! naming the file (and position), and never panics.

mod common;
use common::{dlc, fails, metrics, root, s, text};

use std::path::{Path, PathBuf};

fn tmp(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dlc-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write");
    p
}

/// Width and height of a PNG file.
fn png_size(p: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(p).expect("open"),
    ));
    let info = dec.read_info().expect("a PNG").info().clone();
    (info.width, info.height)
}

#[test]
fn perceptron_runs_the_course_example() {
    let o = dlc(&["run", "models/perceptron.dl", "--input", "x=[[-1,2]]"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    let y = v[0][0].as_f64().expect("number");
    let want = 1.0 / (1.0 + 6f64.exp());
    assert!((y - want).abs() < 1e-6, "{y} vs {want}");
}

/// `--input NAME=@FILE` reads the same values from a .json file and from a .safetensors
/// file (by name, or its only tensor); a missing tensor and another extension are errors.
#[test]
fn inputs_come_from_files() {
    use dlc_data::tensorfile::{NamedTensor, write_atomic};
    let want = dlc(&[
        "run",
        "models/perceptron.dl",
        "--input",
        "x=[[-1,2],[0.5,0.25]]",
    ]);
    assert!(want.status.success(), "{}", text(&want));
    let json = tmp("in.json", b"[[-1,2],[0.5,0.25]]");
    let st = |file: &str, name: &str| {
        let p = std::env::temp_dir()
            .join(format!("dlc-cli-test-{}", std::process::id()))
            .join(file);
        let t = NamedTensor {
            name: name.into(),
            shape: vec![2, 2],
            data: vec![-1.0, 2.0, 0.5, 0.25],
        };
        write_atomic(&p, &[t], &Default::default()).expect("write");
        p
    };
    let named = st("x.safetensors", "x");
    let only = st("samples.safetensors", "samples");
    for p in [&json, &named, &only] {
        let arg = format!("x=@{}", s(p));
        let got = dlc(&["run", "models/perceptron.dl", "--input", &arg]);
        assert!(got.status.success(), "{}", text(&got));
        assert_eq!(got.stdout, want.stdout, "{}", p.display());
    }
    let two = std::env::temp_dir()
        .join(format!("dlc-cli-test-{}", std::process::id()))
        .join("two.safetensors");
    let t = |n: &str| NamedTensor {
        name: n.into(),
        shape: vec![1, 2],
        data: vec![0.0, 1.0],
    };
    write_atomic(&two, &[t("a"), t("b")], &Default::default()).expect("write");
    let e = fails(&[
        "run",
        "models/perceptron.dl",
        "--input",
        &format!("x=@{}", s(&two)),
    ]);
    assert!(e.contains("no tensor `x`") && e.contains("a, b"), "{e}");
    let txt = tmp("in.txt", b"[[1,2]]");
    let e = fails(&[
        "run",
        "models/perceptron.dl",
        "--input",
        &format!("x=@{}", s(&txt)),
    ]);
    assert!(e.contains(".json or .safetensors"), "{e}");
}

#[test]
fn every_model_checks() {
    for e in std::fs::read_dir(root().join("models")).expect("models") {
        let p = e.expect("entry").path();
        let o = dlc(&["check", s(&p)]);
        assert!(o.status.success(), "{}: {}", p.display(), text(&o));
    }
}

#[test]
fn syntax_errors_one_per_item_with_position() {
    let p = tmp(
        "junk.dl",
        b"model A {\n  x = 1 $$ 2\n}\nmodel B {\n  fn forward(x: f32[B, 2]) { x @@ 3 }\n}\n",
    );
    let err = fails(&["check", s(&p)]);
    assert!(err.contains("junk.dl:2:9: error: syntax error"), "{err}");
    assert!(err.contains("junk.dl:5:33: error: syntax error"), "{err}");
    assert!(
        err.contains("  |         ^"),
        "caret under the error: {err}"
    );
}

#[test]
fn truncated_file() {
    let src = std::fs::read(root().join("models/mlp.dl")).expect("read");
    let cut = src.iter().position(|&b| b == b'{').expect("has a brace") + 40;
    let p = tmp("trunc.dl", &src[..cut]);
    let err = fails(&["check", s(&p)]);
    assert!(
        err.contains("trunc.dl:") && err.contains("unexpected end of file"),
        "{err}"
    );
}

#[test]
fn unknown_names_all_reported_with_suggestions() {
    let p = tmp(
        "names.dl",
        b"model M(inputs, classes) {\n  d = Dense(inputs, clases)\n  fn forward(x: f32[B, inputs]) { relu(dd(x)) }\n}\nfn unused(a) { a + zzz }\ntrain M on breast_cancer { loss = mse(forward(x), y)  optimizer = sdg(lr: 0.1) }\n",
    );
    let err = fails(&["check", s(&p)]);
    for want in [
        "names.dl:2:21: error: unknown name `clases`; did you mean `classes`?",
        "names.dl:3:40: error: unknown name `dd`; did you mean `d`?",
        "names.dl:5:20: error: unknown name `zzz`",
        "error: unknown name `sdg`; did you mean `sgd`?",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn shape_mismatch_names_both_shapes_at_the_call() {
    let p = tmp(
        "shapes.dl",
        b"model M(inputs, classes) {\n  d = Dense(inputs + 1, classes)\n  fn forward(x: f32[B, inputs]) { d(x) }\n}\ntrain M on digits { loss = softmax_cross_entropy(forward(flatten(x)), y) }\n",
    );
    let err = fails(&["check", s(&p)]);
    assert!(
        err.contains("shapes.dl:3:35: error: shape mismatch in `@`: shapes [B, 64] and [65, 10]"),
        "{err}"
    );
}

#[test]
fn declared_types_are_checked() {
    let p = tmp("types.dl", b"model M(inputs) {\n  fn forward(x: f32[B, 3]) { x }\n}\ntrain M on diabetes { loss = mse(forward(x), y) }\n");
    let err = fails(&["check", s(&p)]);
    assert!(
        err.contains("argument `x` of `forward` must be f32[B,3], found f32[B,10]"),
        "{err}"
    );
}

#[test]
fn empty_binary_nested_and_huge_files() {
    let e = tmp("empty.dl", b"");
    assert!(fails(&["check", s(&e)]).contains("empty.dl:1:1: error: file defines no model"));
    let mut bin = b"model ".to_vec();
    bin.extend([0xff, 0xfe, 0x00, 0x80]);
    let b = tmp("binary.dl", &bin);
    assert!(fails(&["check", s(&b)]).contains("not UTF-8"));
    let nested = format!(
        "model A {{ fn forward(x: f32[B,2]) {{ {}x{} }} }}\n",
        "(".repeat(200_000),
        ")".repeat(200_000)
    );
    let n = tmp("nested.dl", nested.as_bytes());
    assert!(fails(&["check", s(&n)]).contains("nested deeper than 64"));
    let minus = format!(
        "model A {{ fn forward(x: f32[B,2]) {{ {}x }} }}\n",
        "- ".repeat(300_000)
    );
    let m = tmp("minus.dl", minus.as_bytes());
    fails(&["check", s(&m)]);
    let long = format!(
        "model A {{ fn forward(x: f32[B,2]) {{ x{} }} }}\n",
        " + x".repeat(100_000)
    );
    let l = tmp("long.dl", long.as_bytes());
    assert!(fails(&["check", s(&l)]).contains("deeper than 256"));
    let big = tmp("big.dl", &vec![b'#'; 2 << 20]);
    assert!(fails(&["check", s(&big)]).contains("limited to 1048576 bytes"));
}

#[test]
fn missing_files_and_bad_flags() {
    assert!(fails(&["check", "no/such/file.dl"]).contains("no/such/file.dl"));
    fails(&["train", "models/mlp.dl", "--epochs", "0"]);
    fails(&["train", "models/mlp.dl", "--optimizer", "adamw"]);
    fails(&["train", "models/mlp.dl", "--lr", "-1"]);
    fails(&["train", "models/mlp.dl", "--no-such-flag"]);
    fails(&["train", "models/mlp.dl", "--data", "imagenet=/x"]);
    assert!(fails(&["train", "models/mlp.dl", "--engine", "fast"]).contains("unknown engine"));
    fails(&["compile", "models/mlp.dl", "--emit", "bytecode"]);
    assert!(
        fails(&["run", "models/perceptron.dl", "--input", "x=[[1,2,3]]"])
            .contains("expected shape [B, 2], got [1, 3]")
    );
    assert!(fails(&["run", "models/perceptron.dl", "--input", "x=[[1,"]).contains("not JSON"));
    assert!(fails(&["eval", "models/mlp.dl", "--load", "models/mlp.dl"]).contains("models/mlp.dl"));
    assert!(fails(&["train", "models/logistic.dl"]).contains("--data breast_cancer=PATH"));
}

#[test]
fn broken_data_folders() {
    let dir = std::env::temp_dir().join(format!("dlc-cli-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let err = fails(&[
        "train",
        "models/mlp.dl",
        "--data",
        &format!("mnist={}", dir.display()),
    ]);
    assert!(
        err.contains("missing file") && err.contains(&dir.display().to_string()),
        "{err}"
    );
    // A truncated image file with a valid header.
    let mut img = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    img.extend(vec![0u8; 100]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), &img).expect("write");
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    )
    .expect("write");
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), &img).expect("write");
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    )
    .expect("write");
    let err = fails(&[
        "train",
        "models/mlp.dl",
        "--data",
        &format!("mnist={}", dir.display()),
    ]);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn digits_mlp_trains_deterministically_and_resumes_exactly() {
    let dir = std::env::temp_dir().join(format!("dlc-cli-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = |n: &str| dir.join(n).display().to_string();
    let ok = |args: &[&str]| {
        let o = dlc(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    ok(&[
        "train",
        "models/mlp.dl",
        "--seed",
        "4",
        "--epochs",
        "3",
        "--metrics",
        &p("a.jsonl"),
        "--save",
        &p("a.st"),
    ]);
    ok(&[
        "train",
        "models/mlp.dl",
        "--seed",
        "4",
        "--epochs",
        "3",
        "--metrics",
        &p("b.jsonl"),
    ]);
    let (a, b) = (
        metrics(Path::new(&p("a.jsonl"))),
        metrics(Path::new(&p("b.jsonl"))),
    );
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["train_loss"], y["train_loss"], "same seed, same losses");
        assert_eq!(x["engine"], "jit", "the JIT is the default engine");
        let k = x["kernels"].as_u64().expect("kernels");
        assert!(
            (1..=10).contains(&k),
            "the MLP step is a handful of fused kernels, not {k}"
        );
    }
    // Loss falls.
    assert!(a[2]["train_loss"].as_f64() < a[0]["train_loss"].as_f64());
    // Two epochs, save, resume to three: the third epoch is the same.
    ok(&[
        "train",
        "models/mlp.dl",
        "--seed",
        "4",
        "--epochs",
        "2",
        "--save",
        &p("c.st"),
    ]);
    ok(&[
        "train",
        "models/mlp.dl",
        "--epochs",
        "3",
        "--resume",
        &p("c.st"),
        "--metrics",
        &p("c.jsonl"),
    ]);
    let c = metrics(Path::new(&p("c.jsonl")));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["epoch"], 3);
    assert_eq!(c[0]["train_loss"], a[2]["train_loss"]);
    assert_eq!(c[0]["test_acc"], a[2]["test_acc"]);
    // The checkpoint evaluates to the accuracy training reported.
    ok(&[
        "eval",
        "models/mlp.dl",
        "--load",
        &p("a.st"),
        "--metrics",
        &p("e.jsonl"),
    ]);
    assert_eq!(
        metrics(Path::new(&p("e.jsonl")))[0]["test_acc"],
        a[2]["test_acc"]
    );
}

#[test]
fn digits_mlp_reaches_its_bar() {
    let dir = std::env::temp_dir().join(format!("dlc-cli-bar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let m = dir.join("m.jsonl");
    let o = dlc(&["train", "models/mlp.dl", "--seed", "1", "--metrics", s(&m)]);
    assert!(o.status.success(), "{}", text(&o));
    let last = metrics(&m).pop().expect("a line");
    let acc = last["test_acc"].as_f64().expect("test_acc");
    assert!(acc >= 0.96, "digits MLP test accuracy {acc} < 0.96");
}

#[test]
fn optimized_and_unoptimized_training_agree() {
    let dir = std::env::temp_dir().join(format!("dlc-cli-opt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    for (m, extra) in [(&a, None), (&b, Some("--no-opt"))] {
        let mut args = vec![
            "train",
            "models/mlp.dl",
            "--epochs",
            "2",
            "--seed",
            "5",
            "--metrics",
            s(m),
        ];
        args.extend(extra);
        let o = dlc(&args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    for (x, y) in ma.iter().zip(&mb) {
        let (lx, ly) = (
            x["train_loss"].as_f64().expect("loss"),
            y["train_loss"].as_f64().expect("loss"),
        );
        assert!((lx - ly).abs() <= 1e-4 * lx.abs(), "{lx} vs {ly}");
        assert!(
            x["kernels"].as_u64() < y["kernels"].as_u64(),
            "fusion launches fewer kernels"
        );
    }
    let stats = dlc(&["compile", "models/mlp.dl", "--emit", "opt", "--stats"]);
    let t = text(&stats);
    for key in [
        "nodes_before:",
        "nodes_after:",
        "egraph_nodes:",
        "iterations:",
        "stop_reason: saturated",
        "saturation_ms:",
        "extract_ms:",
        "kernels:",
    ] {
        assert!(t.contains(key), "missing {key} in --stats:\n{t}");
    }
    // The memory plan reuses memory: its arena is smaller than all intermediates together.
    let field = |k: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in --stats:\n{t}"))
    };
    let (peak, total) = (field("peak_bytes:"), field("intermediate_bytes:"));
    assert!(
        0 < peak && peak < total,
        "peak_bytes {peak}, intermediates {total}"
    );
}

#[test]
fn jit_and_reference_engines_agree() {
    let dir = std::env::temp_dir().join(format!("dlc-cli-engines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (dir.join("jit.jsonl"), dir.join("ref.jsonl"));
    for (m, engine) in [(&a, "jit"), (&b, "reference")] {
        let o = dlc(&[
            "train",
            "models/mlp.dl",
            "--epochs",
            "2",
            "--seed",
            "9",
            "--engine",
            engine,
            "--metrics",
            s(m),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x["engine"].as_str(), y["engine"].as_str()),
            (Some("jit"), Some("reference"))
        );
        let (lx, ly) = (
            x["train_loss"].as_f64().expect("loss"),
            y["train_loss"].as_f64().expect("loss"),
        );
        assert!((lx - ly).abs() <= 1e-3 * ly.abs(), "{lx} vs {ly}");
        let (ax, ay) = (
            x["test_acc"].as_f64().expect("acc"),
            y["test_acc"].as_f64().expect("acc"),
        );
        assert!(
            (ax - ay).abs() * 359.0 <= 2.0 + 1e-9,
            "test accuracy differs by more than 2 examples: {ax} vs {ay}"
        );
    }
}

#[test]
fn conv_example_gives_the_course_feature_map() {
    let img = "x=[[[[1],[1],[1],[0],[0]],[[0],[1],[1],[1],[0]],[[0],[0],[1],[1],[1]],[[0],[0],[1],[1],[0]],[[0],[1],[1],[0],[0]]]]";
    for engine in ["jit", "reference"] {
        let o = dlc(&[
            "run",
            "models/conv_example.dl",
            "--input",
            img,
            "--engine",
            engine,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
        assert_eq!(
            v,
            serde_json::json!([[4.0, 3.0, 4.0], [2.0, 4.0, 3.0], [2.0, 3.0, 4.0]]),
            "{engine}"
        );
    }
}

#[test]
fn imports_bring_models_and_report_bad_paths_and_cycles() {
    // The imported file, next to the one that imports it.
    tmp(
        "lib_net.dl",
        b"model Net(height, width, classes) {\n  d = Dense(height * width, classes)\n  fn forward(x: f32[B, height, width]) -> f32[B, classes] { d(flatten(x)) }\n}\n",
    );
    let user = tmp(
        "use_net.dl",
        b"import \"lib_net.dl\"\n\ntrain Net on digits {\n  loss = softmax_cross_entropy(forward(x), y)\n  epochs = 1\n}\n",
    );
    let o = dlc(&["train", s(&user), "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let missing = tmp(
        "missing_import.dl",
        b"import \"nowhere.dl\"\n\nmodel M {\n  fn forward(x: f32[B, 2]) -> f32[B, 2] { x }\n}\n",
    );
    let err = fails(&["check", s(&missing)]);
    assert!(
        err.contains("missing_import.dl:1:1") && err.contains("nowhere.dl"),
        "{err}"
    );
    let a = tmp(
        "cycle_a.dl",
        b"import \"cycle_b.dl\"\n\nmodel A {\n  fn forward(x: f32[B, 2]) -> f32[B, 2] { x }\n}\n",
    );
    tmp(
        "cycle_b.dl",
        b"import \"cycle_a.dl\"\n\nmodel B {\n  fn forward(x: f32[B, 2]) -> f32[B, 2] { x }\n}\n",
    );
    let err = fails(&["check", s(&a)]);
    assert!(err.contains("import cycle"), "{err}");
}

#[test]
fn conv_shape_errors_name_both_shapes_at_the_call() {
    let f = tmp(
        "bad_conv.dl",
        b"model M {\n  w = param([3, 3, 2, 8])\n  fn forward(x: f32[B, 28, 28, 1]) -> f32[B, 26, 26, 8] { conv2d(x, w) }\n}\n",
    );
    let err = fails(&["check", s(&f)]);
    assert!(
        err.contains("bad_conv.dl:3:59")
            && err.contains("[B, 28, 28, 1]")
            && err.contains("[3, 3, 2, 8]"),
        "{err}"
    );
    let g = tmp(
        "bad_pad.dl",
        b"model M {\n  w = param([3, 3, 1, 8])\n  fn forward(x: f32[B, 28, 28, 1]) -> f32[B, 26, 26, 8] { conv2d(x, w, padding: \"full\") }\n}\n",
    );
    let err = fails(&["check", s(&g)]);
    assert!(err.contains("padding is \"valid\" or \"same\""), "{err}");
}

/// An autoencoder's `dlc sample --out`: a PNG grid of test images over their
/// reconstructions and the reconstructions as a tensor; a classifier's forward does not
/// give back images (a clear error), nor does a path of another kind.
#[test]
fn sample_out_draws_reconstructions() {
    let ae = tmp(
        "ae.dl",
        b"model Ae(height, width, latent: 3) {\n  \
            enc = Dense(height * width, latent, activation: relu)\n  \
            dec = Dense(latent, height * width, activation: sigmoid)\n  \
            fn forward(x: f32[B, height, width]) -> f32[B, height, width] {\n    \
              reshape(dec(enc(flatten(x))), [-1, height, width])\n  }\n}\n\
          train Ae on digits {\n  \
            mse = mean((forward(x) - x) ** 2)\n  \
            minimize mse\n  epochs = 1\n}\n",
    );
    let dir = ae.parent().expect("dir").to_path_buf();
    let (ck, png, st) = (
        dir.join("ae.safetensors"),
        dir.join("recon.png"),
        dir.join("recon.safetensors"),
    );
    let o = dlc(&["train", s(&ae), "--save", s(&ck)]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("test_mse") && !out.contains("test_acc"),
        "{out}"
    );
    let o = dlc(&[
        "sample",
        s(&ae),
        "--load",
        s(&ck),
        "--count",
        "5",
        "--out",
        s(&png),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // 5 images of 8×8 at twice the size with 4-pixel gaps, in two lines.
    assert_eq!(png_size(&png), (5 * 20 + 4, 2 * 20 + 4));
    let o = dlc(&[
        "sample",
        s(&ae),
        "--load",
        s(&ck),
        "--count",
        "7",
        "--out",
        s(&st),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (t, _) = dlc_data::tensorfile::read(&st).expect("tensors");
    assert_eq!(
        (t[0].name.as_str(), &t[0].shape[..]),
        ("samples", &[7, 8, 8][..])
    );
    assert!(t[0].data.iter().all(|v| (0.0..=1.0).contains(v)));
    let e = fails(&[
        "sample",
        s(&ae),
        "--load",
        s(&ck),
        "--out",
        s(&dir.join("x.jpg")),
    ]);
    assert!(e.contains(".png") && e.contains(".safetensors"), "{e}");
    let mlp_ck = dir.join("mlp.safetensors");
    let o = dlc(&[
        "train",
        "models/mlp.dl",
        "--epochs",
        "1",
        "--save",
        s(&mlp_ck),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let e = fails(&[
        "sample",
        "models/mlp.dl",
        "--load",
        s(&mlp_ck),
        "--out",
        s(&png),
    ]);
    assert!(e.contains("an image of its input's shape"), "{e}");
}

/// A generative model (a `decode(z)`): `metrics = [...]` reports its terms; `dlc sample
/// --out` decodes codes from the prior (the same seed, the same tensor), `--traverse K`
/// draws 5 lines of 11 images, and a dimension it does not have is a clear error.
#[test]
fn sample_out_decodes_from_the_prior() {
    let vae = tmp(
        "vae.dl",
        b"model V(height, width, latent: 3) {\n  \
            enc = Dense(height * width, 2 * latent)\n  \
            dec = Dense(latent, height * width)\n  \
            fn decode(z: f32[B, latent]) -> f32[B, height, width] {\n    \
              reshape(sigmoid(dec(z)), [-1, height, width])\n  }\n  \
            fn forward(x: f32[B, height, width]) -> f32[B, height, width] { x }\n}\n\
          train V on digits {\n  \
            h = enc(flatten(x))\n  \
            z = h[:, 0:3] + normal(0, 1)[B, latent]\n  \
            recon = mean(sum((flatten(decode(z)) - flatten(x)) ** 2, axis: 1))\n  \
            kl = 0.5 * mean(z * z)\n  \
            elbo = recon + kl\n  \
            minimize elbo\n  metrics = [recon, kl]\n  epochs = 1\n}\n",
    );
    let dir = vae.parent().expect("dir").to_path_buf();
    let ck = dir.join("v.safetensors");
    let o = dlc(&["train", s(&vae), "--save", s(&ck)]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for key in [
        "train_recon",
        "train_kl",
        "test_recon",
        "test_kl",
        "test_elbo",
    ] {
        assert!(out.contains(key), "{key} in {out}");
    }
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    for p in [&a, &b] {
        let o = dlc(&[
            "sample",
            s(&vae),
            "--load",
            s(&ck),
            "--count",
            "6",
            "--seed",
            "4",
            "--out",
            s(p),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, same samples"
    );
    let (t, _) = dlc_data::tensorfile::read(&a).expect("tensors");
    assert_eq!(&t[0].shape[..], &[6, 8, 8]);
    let png = dir.join("t.png");
    let o = dlc(&[
        "sample",
        s(&vae),
        "--load",
        s(&ck),
        "--traverse",
        "2",
        "--out",
        s(&png),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(png_size(&png), (11 * 20 + 4, 5 * 20 + 4));
    let e = fails(&[
        "sample",
        s(&vae),
        "--load",
        s(&ck),
        "--traverse",
        "3",
        "--out",
        s(&png),
    ]);
    assert!(
        e.contains("--traverse 3") && e.contains("3 dimensions"),
        "{e}"
    );
}

/// A dlc built without the `mpi` feature says how to get `--distributed`.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_needs_the_mpi_feature() {
    for cmd in ["train", "bench"] {
        let e = fails(&[cmd, "models/mlp.dl", "--distributed"]);
        assert!(
            e.contains("cargo build --release --bin dlc --features mpi"),
            "{e}"
        );
    }
}

#[test]
fn a_model_too_large_for_memory_is_refused_with_its_size() {
    let file = common::tmp(
        "huge.dl",
        b"model Huge(height, width, classes) {
  a = Dense(height * width, 1000000)
  b = Dense(1000000, 10000000)
  c = Dense(10000000, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { c(b(a(flatten(x)))) }
}
train Huge on digits {
  loss = softmax_cross_entropy(forward(x), y)
}
",
    );
    let err = fails(&["train", s(&file), "--epochs", "1"]);
    // 10^13 weights in `b` alone: 40 TB, with their gradients 80 TB.
    assert!(
        err.contains("huge.dl: training this model needs at least"),
        "{err}"
    );
    assert!(
        err.contains("parameters 40.0 TB") && err.contains("TB ("),
        "{err}"
    );
}

#[test]
fn a_step_whose_intermediate_values_cannot_fit_is_refused_with_their_size() {
    // Small weights (10^7 3×3 filters: 400 MB), huge maps: 32 rows × 6×6 × 10^7 floats are
    // 46 GB per value. The JIT's memory plan of the step is counted before anything of
    // that size is allocated.
    let file = common::tmp(
        "wide.dl",
        b"model Wide(height, width, classes) {
  conv = Conv2D(1, 10000000, 3, activation: relu)
  out = Dense(36, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] {
    let h = conv(reshape(x, [-1, height, width, 1]))
    out(flatten(sum(h, axis: -1)))
  }
}
train Wide on digits {
  loss = softmax_cross_entropy(forward(x), y)
  optimizer = adam(lr: 1e-3)
  batch = 32
}
",
    );
    let err = fails(&["train", s(&file), "--epochs", "1"]);
    assert!(
        err.contains("wide.dl: training this model needs at least")
            && err.contains("parameters 400.0 MB")
            && err.contains("intermediate values of a step at batch 32")
            && err.contains("make the batch or the layers' outputs smaller"),
        "{err}"
    );
}

#[test]
fn save_into_a_missing_folder_fails_before_training() {
    let o = dlc(&[
        "train",
        "models/mlp.dl",
        "--epochs",
        "1",
        "--save",
        "/nonexistent-dlc-folder/ck.safetensors",
    ]);
    assert!(!o.status.success());
    let all = text(&o);
    assert!(
        all.contains("--save /nonexistent-dlc-folder/ck.safetensors: the folder /nonexistent-dlc-folder does not exist"),
        "{all}"
    );
    assert!(!all.contains("epoch 1"), "trained before refusing: {all}");
}

/// A digits model whose forward function ends in `last` (given `h`, the dense layer's
/// output), trained for one epoch with `flags`: (exit code, stdout and stderr).
fn numerics_run(name: &str, last: &str, flags: &[&str]) -> (Option<i32>, String) {
    let src = format!(
        "model Bad(height, width, classes) {{
  d = Dense(height * width, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] {{
    let h = d(flatten(x))
    {last}
  }}
}}

train Bad on digits {{
  loss = softmax_cross_entropy(forward(x), y)
}}
"
    );
    let file = common::tmp(name, src.as_bytes());
    let o = dlc(&[&["train", s(&file), "--epochs", "1"], flags].concat());
    (o.status.code(), text(&o))
}

#[test]
fn check_numerics_names_the_op_and_its_place_in_the_file() {
    let (code, out) = numerics_run("bad.dl", "log(h - h) + h", &["--check-numerics"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    // log(0) is the first value that is not finite, on line 5, column 5.
    assert!(
        out.contains("bad.dl:5:5: error: `log` gave an infinite value (-inf) at step 1 (epoch 1)"),
        "{out}"
    );
    assert!(out.contains("5 |     log(h - h) + h"), "{out}");
    // Without the flag, the message about the loss.
    let (code, out) = numerics_run("bad2.dl", "log(h - h) + h", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the loss is"), "{out}");
    assert!(!out.contains("error: `log`"), "{out}");
}

#[test]
fn check_numerics_tells_a_gradient_that_is_not_finite_after_a_finite_forward_pass() {
    // sqrt(0) is finite; its derivative is not.
    let (code, out) = numerics_run("grad.dl", "sqrt(h - h) + h", &["--check-numerics"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("grad.dl: the gradient of `d.w` is NaN at step 1 (epoch 1), while the forward pass is finite"),
        "{out}"
    );
}

#[test]
fn check_numerics_tells_an_update_that_overflows_from_finite_gradients() {
    let (code, out) = numerics_run(
        "overflow.dl",
        "h",
        &["--check-numerics", "--optimizer", "sgd", "--lr", "1e39"],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("overflow.dl: the update of `d.") && out.contains("at step 1 (epoch 1)"),
        "{out}"
    );
}

#[test]
fn check_numerics_names_the_op_on_an_environment() {
    let file = common::tmp(
        "bad_policy.dl",
        b"model Policy(observations, actions) {
  l1 = Dense(observations, 16, activation: relu)
  out = Dense(16, actions)
  fn forward(obs: f32[B, observations]) -> f32[B, actions] { out(l1(obs)) }
}
train Policy on cartpole {
  episodes(count: 1, gamma: 0.99)
  softmax_policy()
  log_pi = sum(log_softmax(forward(obs), axis: 1) * one_hot(action, actions), axis: 1)
  loss = -mean(log_pi * log(ret - ret))
  optimizer = adam(lr: 2e-3)
  steps = 2000
}
",
    );
    let err = fails(&["train", s(&file), "--check-numerics"]);
    assert!(
        err.contains(
            "bad_policy.dl:10:25: error: `log` gave an infinite value (-inf) at update 1 (episode 1)"
        ),
        "{err}"
    );
}

#[test]
fn run_check_numerics_names_the_op_of_a_prediction_that_is_not_finite() {
    let file = common::tmp(
        "run_bad.dl",
        b"model Bad {
  w = const([[1.0], [1.0]])
  fn forward(x: f32[B, 2]) -> f32[B, 1] {
    sqrt(x @ w - 3.0)
  }
}
",
    );
    let args = ["run", s(&file), "--input", "x=[[1,1]]"];
    // sqrt(-1): NaN; without the flag it is printed as it is.
    let o = dlc(&args);
    assert!(o.status.success(), "{}", text(&o));
    let err = fails(&[&args[..], &["--check-numerics"]].concat());
    assert!(
        err.contains(
            "run_bad.dl:4:5: error: `sqrt` gave NaN: the first op whose output is not finite"
        ),
        "{err}"
    );
}
