//! `mc_dropout(passes: T)` and `dlc eval --ood`: the predictive uncertainty of a classifier,
//! its split into aleatoric and epistemic parts, and out-of-distribution detection, the same
//! on the JIT and on the reference interpreter.

mod common;
use common::{dlc, fails, metrics, ok, s, text, tmp};
use serde_json::Value;

/// A small dropout network on the embedded digits; `{mc}` is the Monte Carlo statement.
fn program(mc: &str) -> String {
    format!(
        "model M(height, width, classes, rate: 0.5) {{\n  \
           l1 = Dense(height * width, 64, activation: relu)\n  \
           out = Dense(64, classes)\n  \
           fn forward(x: f32[B, height, width]) -> f32[B, classes] {{ out(dropout(l1(flatten(x)), rate)) }}\n\
         }}\n\
         train M on digits {{\n  \
           loss = softmax_cross_entropy(forward(x), y)\n  \
           optimizer = adam(lr: 0.01)\n  \
           epochs = 3\n  \
           {mc}\n\
         }}\n"
    )
}

fn num(line: &Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {line}"))
}

/// Train `src` for 3 epochs, evaluate its checkpoint with `--ood digits` on `engine`:
/// the metrics lines of the evaluation.
fn evaluate(name: &str, src: &str, engines: &[&str]) -> Vec<Vec<Value>> {
    let file = tmp(&format!("{name}.dl"), src.as_bytes());
    let ck = file.with_extension("safetensors");
    ok(&["train", s(&file), "--seed", "3", "--save", s(&ck)]);
    engines
        .iter()
        .map(|engine| {
            let m = file.with_extension(format!("{engine}.jsonl"));
            ok(&[
                "eval",
                s(&file),
                "--load",
                s(&ck),
                "--ood",
                "digits",
                "--engine",
                engine,
                "--metrics",
                s(&m),
            ]);
            metrics(&m)
        })
        .collect()
}

#[test]
fn monte_carlo_dropout_splits_the_uncertainty_on_both_engines() {
    let runs = evaluate(
        "mc",
        &program("mc_dropout(passes: 8)"),
        &["jit", "reference"],
    );
    for lines in &runs {
        // The deterministic line, then the Monte Carlo one.
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (det, mc) = (&lines[0], &lines[1]);
        assert!(det.get("passes").is_none());
        assert_eq!(mc["passes"], 8);
        assert!(num(mc, "test_acc") >= 0.85, "{mc}");
        assert!(
            (num(mc, "test_acc") - num(det, "test_acc")).abs() <= 0.05,
            "{det} {mc}"
        );
        // Dropout on at test: the passes disagree, and the parts add up to the whole.
        let (h, a, e) = (
            num(mc, "entropy_in"),
            num(mc, "aleatoric_in"),
            num(mc, "epistemic_in"),
        );
        assert!(e > 0.0 && a > 0.0, "{mc}");
        assert!((h - (a + e)).abs() <= 1e-9 * h.max(1.0), "{mc}");
        // The same images out of distribution: the same figures, every score tied.
        assert_eq!(mc["ood"], "digits");
        assert_eq!(num(mc, "ood_auroc"), 0.5);
        for part in ["entropy", "aleatoric", "epistemic"] {
            assert_eq!(
                num(mc, &format!("{part}_ood")),
                num(mc, &format!("{part}_in"))
            );
        }
    }
    // The interpreter is the oracle: the JIT's figures agree with it.
    for key in [
        "test_acc",
        "test_nll",
        "entropy_in",
        "aleatoric_in",
        "epistemic_in",
    ] {
        let (j, r) = (num(&runs[0][1], key), num(&runs[1][1], key));
        assert!(
            (j - r).abs() <= 1e-4 * r.abs().max(1e-3),
            "{key}: jit {j} reference {r}"
        );
    }
}

#[test]
fn without_mc_dropout_one_deterministic_pass() {
    let runs = evaluate("det", &program(""), &["jit"]);
    let (det, one) = (&runs[0][0], &runs[0][1]);
    assert_eq!(one["passes"], 1);
    assert_eq!(num(one, "epistemic_in"), 0.0);
    assert_eq!(num(one, "test_acc"), num(det, "test_acc"));
    assert_eq!(num(one, "entropy_in"), num(one, "aleatoric_in"));
}

#[test]
fn bad_uncertainty_settings_are_errors() {
    let zero = tmp("zero.dl", program("mc_dropout(passes: 0)").as_bytes());
    let e = fails(&["check", s(&zero)]);
    assert!(
        e.contains("zero.dl:10:3:") && e.contains("mc_dropout takes passes"),
        "{e}"
    );
    let file = tmp("ood.dl", program("mc_dropout(passes: 2)").as_bytes());
    let ck = file.with_extension("safetensors");
    ok(&["train", s(&file), "--epochs", "1", "--save", s(&ck)]);
    let e = fails(&["eval", s(&file), "--load", s(&ck), "--ood", "nowhere"]);
    assert!(
        e.contains("--ood") && e.contains("unknown data set `nowhere`"),
        "{e}"
    );
    let e = fails(&["eval", s(&file), "--load", s(&ck), "--ood", "mnist"]);
    assert!(e.contains("--ood") && e.contains("no embedded copy"), "{e}");
    let o = dlc(&["eval", s(&file), "--load", s(&ck)]);
    // Without --ood: the in-distribution figures alone.
    assert!(
        o.status.success() && text(&o).contains("epistemic_in") && !text(&o).contains("ood_auroc")
    );
}
