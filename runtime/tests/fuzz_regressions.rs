//! Inputs the fuzz targets (`fuzz/`) found to crash dlc, kept as tests on stable: each is
//! now an error that names the file and the place, with no panic.

mod common;
use common::{fails, s, tmp};

/// `dl_train_step`, 2026-12-03: a member whose value holds one of the model's own functions
/// (here an argument of a layer) kept the instance being made alive, and instantiation
/// panicked ("instance is not shared during instantiation").
#[test]
fn a_member_that_refers_to_a_function_of_its_model_is_an_error() {
    let cases: [(&str, &str, &str); 3] = [
        (
            "member_arg.dl",
            "model M(height, width, classes) {
  enc = Dense(height * width, decode)
  out = Dense(4, classes)
  fn decode(z) { z }
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { out(enc(flatten(x))) }
}
train M on digits {
  loss = softmax_cross_entropy(forward(x), y)
}
",
            "member_arg.dl:2:9: error: expected a number, found a function",
        ),
        (
            "member_alias.dl",
            "model M(height, width, classes) {
  f = decode
  out = Dense(height * width, classes)
  fn decode(z) { z }
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { out(f(flatten(x))) }
}
train M on digits {
  loss = softmax_cross_entropy(forward(x), y)
}
",
            "member_alias.dl:2:7: error: this refers to a function of `M` while the model is being made",
        ),
        (
            "param_default.dl",
            "model M(height, width, classes, k: decode) {
  out = Dense(height * width, classes)
  fn decode(z) { z }
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { out(flatten(x)) }
}
train M on digits {
  loss = softmax_cross_entropy(forward(x), y)
}
",
            "param_default.dl:1:36: error: this refers to a function of `M` while the model is being made",
        ),
    ];
    for (name, src, want) in cases {
        let file = tmp(name, src.as_bytes());
        for args in [
            vec!["check", s(&file)],
            vec!["train", s(&file), "--steps", "1"],
        ] {
            let err = fails(&args);
            assert!(err.contains(want), "dlc {args:?}:\n{err}");
        }
    }
}
