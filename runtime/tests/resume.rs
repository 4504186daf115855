//! `--save` writes the checkpoint at the end of every epoch: a run killed (SIGKILL) in the
//! middle of training resumes with `--resume` from its last finished epoch and ends with the
//! same checkpoint, bit for bit, as a run that was never interrupted.
//!
//! No timing assumptions: the run to kill is made to stop in the middle of an epoch by the
//! test-only `DLC_TEST_STALL_AT_STEP` environment variable (it waits there to be killed), and
//! the test polls the checkpoint with a generous timeout. Ctrl-C (SIGINT) stops a run after
//! its running step, writes the checkpoint of that step, and the run resumes from it.

mod common;

use dlc_runtime::checkpoint::Checkpoint;
use dlc_runtime::trainer::STALL_ENV;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

fn dlc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlc"));
    c.current_dir(root()).env_remove(STALL_ENV);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(args: &[&str]) {
    let o = dlc().args(args).output().expect("runs dlc");
    assert!(o.status.success(), "dlc {args:?}:\n{}", text(&o));
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("metrics file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dlc-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The epoch a checkpoint file was written after, if it exists and is readable.
fn saved_epoch(path: &Path) -> Option<usize> {
    let ck = Checkpoint::load(path).ok()?;
    ck.meta_num("epoch", path).ok()
}

/// Final checkpoints are the same: the same bytes, and (for a readable failure message)
/// the same tensors bit for bit and the same metadata.
fn assert_same_checkpoint(a: &Path, b: &Path) {
    let (ca, cb) = (
        Checkpoint::load(a).expect("checkpoint a"),
        Checkpoint::load(b).expect("checkpoint b"),
    );
    assert_eq!(ca.meta, cb.meta, "checkpoint metadata");
    assert_eq!(
        ca.tensors.keys().collect::<Vec<_>>(),
        cb.tensors.keys().collect::<Vec<_>>(),
        "checkpoint tensor names"
    );
    for (name, ta) in &ca.tensors {
        let tb = &cb.tensors[name];
        assert_eq!(ta.shape(), tb.shape(), "shape of {name}");
        let differ = ta
            .iter()
            .zip(tb.iter())
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "{name}: {differ} of {} values differ", ta.len());
    }
    assert!(
        std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b"),
        "same tensors and metadata, yet different bytes"
    );
}

/// Train `args` uninterrupted (saving to `a`); train it again saving to `b`, killed with
/// SIGKILL in the middle of epoch `kill_in + 1` (after `b` holds epoch `kill_in`, chosen
/// from the uninterrupted run's metrics); resume it to the end; compare. Returns the
/// uninterrupted run's metrics.
fn killed_run_resumes_exactly(
    d: &Path,
    file: &str,
    args: &[&str],
    kill_in: impl Fn(&[serde_json::Value]) -> usize,
) -> Vec<serde_json::Value> {
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let (ma, mb, mc) = (d.join("a.jsonl"), d.join("b.jsonl"), d.join("c.jsonl"));
    let with = |save: &Path, m: &Path| -> Vec<String> {
        let mut v: Vec<String> = vec!["train".into(), file.into()];
        v.extend(args.iter().map(|x| x.to_string()));
        v.extend([
            "--save".into(),
            s(save).into(),
            "--metrics".into(),
            s(m).into(),
        ]);
        v
    };
    let argv = with(&a, &ma);
    ok(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let full = metrics(&ma);
    let steps_per_epoch = full[0]["step"].as_u64().expect("step") as usize;
    let kill_in = kill_in(&full);
    let epochs = full
        .iter()
        .filter(|m| m.get("train_loss").is_some())
        .count();
    assert!(
        0 < kill_in && kill_in < epochs,
        "killing after epoch {kill_in} of {epochs}"
    );

    // The same run, made to stall half-way through epoch kill_in + 1.
    let stall = kill_in * steps_per_epoch + steps_per_epoch / 2;
    let mut child = dlc()
        .args(with(&b, &mb))
        .env(STALL_ENV, stall.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns dlc");
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        if let Some(e) = saved_epoch(&b) {
            if seen.last() != Some(&e) {
                seen.push(e);
            }
            // The checkpoint of an epoch is written before its metrics line: kill once
            // both are out (the run then stalls in the next epoch).
            let lines = std::fs::read_to_string(&mb).map_or(0, |t| t.matches('\n').count());
            if e == kill_in && lines >= kill_in {
                break;
            }
            assert!(
                e <= kill_in,
                "checkpoint of epoch {e}: the run did not stall"
            );
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("dlc ended ({status}) before its checkpoint held epoch {kill_in}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no checkpoint of epoch {kill_in} after {:?} (saw epochs {seen:?})",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL, not {status}");
    // The killed run left a checkpoint of its last finished epoch, and no temporary file.
    assert_eq!(saved_epoch(&b), Some(kill_in));
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let killed = metrics(&mb);
    assert_eq!(killed.len(), kill_in, "one metrics line per finished epoch");

    // Resume to the same total: same final checkpoint, same metrics for the epochs after.
    let epochs = epochs.to_string();
    let mut resume: Vec<&str> = vec!["train", file, "--resume", s(&b), "--save", s(&b)];
    resume.extend(["--metrics", s(&mc)]);
    // Flags other than the seed (the checkpoint has it) are given again.
    let mut rest = args.iter();
    while let Some(&flag) = rest.next() {
        match flag {
            "--seed" => {
                rest.next();
            }
            "--epochs" => {
                rest.next();
                resume.extend(["--epochs", &epochs]);
            }
            other => resume.push(other),
        }
    }
    ok(&resume);
    assert_same_checkpoint(&a, &b);
    let resumed = metrics(&mc);
    let trained: Vec<_> = full
        .iter()
        .filter(|m| m.get("train_loss").is_some())
        .collect();
    for (x, y) in trained[kill_in..].iter().zip(&resumed) {
        assert_eq!(x["epoch"], y["epoch"]);
        for key in ["train_loss", "val_loss", "test_loss", "test_acc"] {
            assert_eq!(x.get(key), y.get(key), "{key} of epoch {}", x["epoch"]);
        }
    }
    full
}

#[test]
fn mlp_killed_mid_epoch_resumes_bit_exactly() {
    let d = dir("mlp");
    let full = killed_run_resumes_exactly(
        &d,
        "models/mlp.dl",
        &["--seed", "11", "--epochs", "5"],
        |_| 2,
    );
    assert_eq!(full.len(), 5);
    let _ = std::fs::remove_dir_all(&d);
}

/// With early stopping: the per-epoch checkpoints carry the best weights and the patience
/// left, and the final checkpoint holds the restored best weights, as without a kill. The
/// run is killed in its last epoch, the one that stops it: the epoch before it did not
/// improve, so the checkpoint resumed from has patience 1 left (with 2 restored instead,
/// the resumed run would not stop there).
#[test]
fn early_stopping_killed_mid_epoch_resumes_bit_exactly() {
    let d = dir("early");
    let model = d.join("early.dl");
    std::fs::write(
        &model,
        "model Net(height, width, classes) {\n  \
           d1 = Dense(height * width, 32, init: he, activation: relu)\n  \
           d2 = Dense(32, classes)\n  \
           fn forward(x: f32[B, height, width]) -> f32[B, classes] { d2(dropout(d1(flatten(x)), 0.2)) }\n\
         }\n\
         train Net on digits {\n  \
           loss = softmax_cross_entropy(forward(x), y)\n  \
           optimizer = sgd(lr: 0.5)\n  \
           batch = 32\n  \
           epochs = 40\n  \
           early_stopping(patience: 2)\n\
         }\n",
    )
    .expect("write model");
    let full = killed_run_resumes_exactly(&d, s(&model), &["--seed", "3"], |m| {
        let stop = m
            .iter()
            .position(|l| l.get("early_stop").is_some())
            .expect("the run stops early");
        assert!(
            stop >= 2,
            "stopped at epoch {}: too early for this test",
            stop + 1
        );
        stop
    });
    let last = full.last().expect("lines");
    assert!(
        last.get("restored_epoch").is_some(),
        "the run restores its best weights: {last}"
    );
    // The final checkpoint has the restored weights, not those of the last epoch.
    let ck = Checkpoint::load(&d.join("b.safetensors")).expect("checkpoint");
    let best_epoch: usize = ck
        .meta_num("best_epoch", Path::new("b"))
        .expect("best_epoch");
    assert!(
        best_epoch
            < ck.meta_num::<usize>("epoch", Path::new("b"))
                .expect("epoch")
    );
    for (name, t) in &ck.tensors {
        if let Some(p) = name.strip_prefix("best.") {
            assert_eq!(&ck.tensors[p], t, "{p} is the best epoch's");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Two objectives, each over its own member with its own optimizer (both optimizers'
/// states in the checkpoint): killed mid-epoch, resumed bit for bit; every metrics line
/// has each objective's value for training and test, and `train_loss` is their sum.
#[test]
fn two_objectives_killed_mid_epoch_resume_bit_exactly() {
    let d = dir("objectives");
    let model = d.join("two.dl");
    std::fs::write(
        &model,
        "model Net(height, width, classes) {\n  \
           body = Dense(height * width, 32, activation: relu)\n  \
           head = Dense(32, classes)\n  \
           fn forward(x: f32[B, height, width]) -> f32[B, classes] { head(body(flatten(x))) }\n\
         }\n\
         train Net on digits {\n  \
           ce = softmax_cross_entropy(forward(x), y)\n  \
           fit = softmax_cross_entropy(forward(x), y) + 0.01 * mean(body.w * body.w)\n  \
           minimize ce over head with adam(lr: 1e-3)\n  \
           minimize fit over body with momentum(lr: 0.05, beta: 0.9)\n  \
           batch = 64\n  \
           epochs = 4\n\
         }\n",
    )
    .expect("write model");
    let full = killed_run_resumes_exactly(&d, s(&model), &["--seed", "5"], |_| 2);
    for m in &full {
        for key in ["train_ce", "train_fit", "test_ce", "test_fit"] {
            assert!(m.get(key).is_some_and(|v| v.is_f64()), "{key} in {m}");
        }
        let sum = m["train_ce"].as_f64().unwrap() + m["train_fit"].as_f64().unwrap();
        let total = m["train_loss"].as_f64().unwrap();
        // (Each step's total is summed in f32, each objective's value in f64.)
        assert!(
            (sum - total).abs() < 1e-6 * total.abs().max(1.0),
            "{sum} vs {total}"
        );
    }
    // Both optimizers' states, each for its own member's parameters only.
    let ck = Checkpoint::load(&d.join("a.safetensors")).expect("checkpoint");
    let names: Vec<&str> = ck.tensors.keys().map(String::as_str).collect();
    for n in ["opt.m.head.w", "opt.v.head.w", "opt.v.body.w"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(
        !names.contains(&"opt.m.body.w"),
        "momentum keeps one state: {names:?}"
    );
    // Training moved the accuracy: both objectives trained their members.
    let last = full.last().expect("lines");
    assert!(last["test_acc"].as_f64().unwrap() > 0.8, "{last}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ctrl_c_mid_epoch_saves_the_last_step_and_resumes_bit_exactly() {
    let d = dir("sigint");
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let args = ["train", "models/mlp.dl", "--seed", "3", "--epochs", "2"];
    ok(&[&args[..], &["--save", s(&a)]].concat());
    // The same run, stopped by SIGINT before step 30 (in the second epoch of 23 steps).
    let (code, printed) = common::interrupt_at(
        &[&args[..], &["--save", s(&b)]].concat(),
        Some((STALL_ENV, "29")),
        "stalled before step 30",
    );
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("interrupted after step 29 (epoch 2); saved"),
        "{printed}"
    );
    let ck = Checkpoint::load(&b).expect("the interrupted run's checkpoint");
    assert_eq!(ck.meta_num::<u64>("step", &b).expect("step"), 29);
    // Resumed, it ends where the uninterrupted run ended, bit for bit.
    ok(&[
        "train",
        "models/mlp.dl",
        "--epochs",
        "2",
        "--resume",
        s(&b),
        "--save",
        s(&b),
    ]);
    assert_same_checkpoint(&a, &b);
    let _ = std::fs::remove_dir_all(&d);
}
