//! Data-parallel training over MPI (`--features mpi`; CI installs OpenMPI): two ranks train
//! what one process trains, rank 0 alone writes, and an error on a rank ends the job.
#![cfg(feature = "mpi")]

mod common;
use common::{metrics, root, s, text, tmp};
use std::process::{Command, Output};

fn mpirun(np: &str, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", np])
        .arg(env!("CARGO_BIN_EXE_dlc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("runs mpirun (OpenMPI: apt-get install openmpi-bin libopenmpi-dev)")
}

type Lines = Vec<serde_json::Value>;

/// The metrics lines of `dlc train ARGS` on one process and on two ranks
/// (`--distributed`), and what the two ranks printed.
fn one_and_two(args: &[&str]) -> (Lines, Lines, String) {
    one_and("2", args)
}

/// [`one_and_two`] with `np` ranks.
fn one_and(np: &str, args: &[&str]) -> (Lines, Lines, String) {
    // Tests run at once: each call writes metrics files of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let one = tmp(&format!("run{call}.one.jsonl"), b"");
    let two = one.with_extension("two.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_dlc"))
        .args(args)
        .args(["--metrics", s(&one)])
        .current_dir(root())
        .output()
        .expect("runs dlc");
    assert!(o.status.success(), "{}", text(&o));
    let o = mpirun(
        np,
        &[args, &["--distributed", "--metrics", s(&two)]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    (metrics(&one), metrics(&two), text(&o))
}

fn losses(lines: &[serde_json::Value]) -> Vec<f64> {
    lines
        .iter()
        .filter_map(|l| l.get("train_loss").and_then(|v| v.as_f64()))
        .collect()
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let common = [
        "train",
        "models/mlp.dl",
        "--epochs",
        "3",
        "--seed",
        "2",
        "--threads",
        "1",
    ];
    let (a, b, printed) = one_and_two(&common);
    // Rank 0 alone prints and writes: one line per epoch.
    assert_eq!(printed.matches("epoch 3 ").count(), 1, "{printed}");
    assert_eq!(b.len(), 3, "{b:?}");
    for (x, y) in losses(&a).iter().zip(losses(&b)) {
        assert!((x - y).abs() <= 1e-3 * x.abs(), "train_loss {x} vs {y}");
    }
    let acc = |l: &[serde_json::Value]| l.last().unwrap()["test_acc"].as_f64().unwrap();
    assert!(
        (acc(&a) - acc(&b)).abs() <= 0.003,
        "{} vs {}",
        acc(&a),
        acc(&b)
    );
    assert!(
        b.iter()
            .all(|l| l["ranks"] == 2 && l["param_checksum"].is_number())
    );
    // The gradient norms one process reports, of the whole batch's gradient.
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (&x["grad_norm_mean"], &y["grad_norm_mean"]);
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= 1e-3 * x, "grad_norm_mean {x} vs {y}");
    }
}

#[test]
fn gradients_in_buckets_of_one_on_three_ranks_some_without_rows() {
    // 1438 training digits in batches of 479: the last batch has one row, so two of the
    // three ranks have none and send zeros; every gradient is a bucket of its own, its
    // all-reduce started as the backward pass computes it.
    let args = [
        "train",
        "models/mlp.dl",
        "--epochs",
        "2",
        "--batch",
        "479",
        "--seed",
        "4",
        "--threads",
        "1",
        "--bucket-mb",
        "0",
    ];
    let (a, b, _) = one_and("3", &args);
    assert_eq!(a[0]["step"], 4, "{a:?}");
    assert_eq!(b.len(), 2, "{b:?}");
    for (x, y) in losses(&a).iter().zip(losses(&b)) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "train_loss {x} vs {y}");
    }
    assert!(b.iter().all(|l| l["ranks"] == 3));
}

#[test]
fn dropout_masks_do_not_depend_on_the_ranks() {
    let file = tmp(
        "drop.dl",
        b"model Net(height, width, classes) {
  d1 = Dense(height * width, 64, init: he, activation: relu)
  d2 = Dense(64, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { d2(dropout(d1(flatten(x)), 0.3)) }
}
train Net on digits {
  loss = softmax_cross_entropy(forward(x), y)
  optimizer = adam(lr: 0.01)
  epochs = 3
}
",
    );
    let (a, b, _) = one_and_two(&["train", s(&file), "--seed", "3", "--threads", "1"]);
    // With masks keyed by the row within each rank's slice, the losses part after the
    // first step; keyed by the global row, they agree within float rounding.
    for (x, y) in losses(&a).iter().zip(losses(&b)) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "train_loss {x} vs {y}");
    }
}

#[test]
fn early_stopping_stops_and_restores_as_one_process_does() {
    let file = tmp(
        "es.dl",
        b"model Net(height, width, classes) {
  d1 = Dense(height * width, 64, init: he, activation: relu)
  d2 = Dense(64, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] { d2(d1(flatten(x))) }
}
train Net on digits {
  loss = softmax_cross_entropy(forward(x), y)
  optimizer = adam(lr: 0.01)
  epochs = 30
  early_stopping(patience: 2)
}
",
    );
    let (a, b, _) = one_and_two(&["train", s(&file), "--seed", "3", "--threads", "1"]);
    // The same epochs, the same stop, the same restored epoch and test accuracy.
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(&b) {
        for key in ["val_loss", "test_loss"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((u - v).abs() <= 1e-3 * u.abs(), "{key}: {u} vs {v}");
        }
        assert_eq!(x.get("early_stop"), y.get("early_stop"));
        assert_eq!(x.get("restored_epoch"), y.get("restored_epoch"));
    }
    assert!(b.last().unwrap().get("restored_epoch").is_some(), "{b:?}");
}

#[test]
fn an_error_on_a_rank_ends_the_job() {
    let o = mpirun(
        "2",
        &[
            "train",
            "models/mlp.dl",
            "--data",
            "mnist=/nonexistent",
            "--distributed",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("/nonexistent: folder not found"),
        "{}",
        text(&o)
    );
    let o = mpirun("2", &["train", "models/dqn.dl", "--distributed"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--distributed trains on a data set"),
        "{}",
        text(&o)
    );
}
