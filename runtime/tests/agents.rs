//! Training from an environment: runs are reproducible, resume exactly, evaluate their
//! checkpoints the same way, act without allocating, agree between the engines, and bad
//! sections are errors that name what is wrong.

mod common;
use common::{fails, metrics, ok, root, s};

use dlc_runtime::agent::Actor;
use dlc_runtime::engine::EngineKind;
use dlc_runtime::session::{self, Overrides};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dlc-agents-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// The per-episode lines.
fn episodes(path: &Path) -> Vec<serde_json::Value> {
    metrics(path)
        .into_iter()
        .filter(|m| m.get("episode").is_some())
        .collect()
}

/// The episode lines of a whole run (`whole`) are those of its first part (`first`) then
/// those of the run resumed from it (`rest`); returns them.
fn same_episodes(whole: &Path, first: &Path, rest: &Path) -> Vec<serde_json::Value> {
    let all = episodes(whole);
    let mut parts = episodes(first);
    parts.extend(episodes(rest));
    assert_eq!(
        all, parts,
        "a resumed run differs from one that was not stopped"
    );
    all
}

#[test]
fn dqn_is_reproducible_resumes_exactly_and_evaluates_its_checkpoint() {
    let d = dir("dqn");
    let (a, b, c) = (d.join("a.jsonl"), d.join("b.jsonl"), d.join("c.jsonl"));
    let (ck_a, ck_b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let model = "models/dqn.dl";
    // 1000 warm-up steps, then an update per step: about 600 updates.
    ok(&[
        "train",
        model,
        "--seed",
        "3",
        "--steps",
        "1600",
        "--metrics",
        s(&a),
        "--save",
        s(&ck_a),
    ]);
    ok(&[
        "train",
        model,
        "--seed",
        "3",
        "--steps",
        "1200",
        "--metrics",
        s(&b),
        "--save",
        s(&ck_b),
    ]);
    ok(&[
        "train",
        model,
        "--resume",
        s(&ck_b),
        "--steps",
        "1600",
        "--metrics",
        s(&c),
    ]);
    let whole = same_episodes(&a, &b, &c);
    assert!(whole.len() > 20, "{} episodes", whole.len());
    assert!(
        whole.iter().any(|m| m.get("loss").is_some()),
        "no updates ran"
    );
    let last = metrics(&a).pop().expect("a last line");
    let mean = last["eval_return_mean"].as_f64().expect("eval_return_mean");
    assert!(last["eval_return_std"].as_f64().is_some());
    assert_eq!(last["eval_episodes"], 100);
    // The checkpoint holds the weights evaluated: `dlc eval` gives the same figure.
    let e = d.join("e.jsonl");
    ok(&["eval", model, "--load", s(&ck_a), "--metrics", s(&e)]);
    let ev = metrics(&e).pop().expect("an eval line");
    assert_eq!(ev["eval_return_mean"].as_f64(), Some(mean));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ctrl_c_ends_the_episode_saves_and_resumes_exactly() {
    let d = dir("sigint");
    let (a, b, c) = (d.join("a.jsonl"), d.join("b.jsonl"), d.join("c.jsonl"));
    let (ck_a, ck_b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let model = "models/reinforce.dl";
    let args = ["train", model, "--seed", "4", "--steps", "600"];
    ok(&[&args[..], &["--metrics", s(&a), "--save", s(&ck_a)]].concat());
    // The same run, stopped by SIGINT after its 7th episode (between two evaluations).
    let (code, printed) = common::interrupt_at(
        &[&args[..], &["--metrics", s(&b), "--save", s(&ck_b)]].concat(),
        Some((dlc_runtime::agent::STALL_ENV, "7")),
        "stalled after episode 7",
    );
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("interrupted after episode 7 (environment step")
            && printed.contains("; saved ")
            && printed.contains("--resume"),
        "{printed}"
    );
    assert_eq!(episodes(&b).len(), 7, "{printed}");
    // Resumed, it goes on as the run that was not stopped, to the same final checkpoint.
    ok(&[
        "train",
        model,
        "--resume",
        s(&ck_b),
        "--steps",
        "600",
        "--metrics",
        s(&c),
        "--save",
        s(&ck_b),
    ]);
    same_episodes(&a, &b, &c);
    let (last_a, last_c) = (metrics(&a).pop().expect("a"), metrics(&c).pop().expect("c"));
    for key in [
        "episodes",
        "env_steps",
        "updates",
        "eval_return_mean",
        "eval_return_std",
    ] {
        assert!(last_a.get(key).is_some(), "{key} in {last_a}");
        assert_eq!(
            last_a.get(key),
            last_c.get(key),
            "the final evaluation's {key}"
        );
    }
    assert!(
        std::fs::read(&ck_a).expect("a") == std::fs::read(&ck_b).expect("b"),
        "the final checkpoints differ"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_engines_act_and_update_alike() {
    let d = dir("engines");
    // The Gaussian policy with one update per 8 episodes (its 80 small Adam steps per
    // batch amplify rounding differences into a different but equally good run).
    let source = std::fs::read_to_string(root().join("models/gaussian_policy.dl")).expect("model");
    let line = "episodes(count: 8, gamma: 0.9, lambda: 0.95, epochs: 10, batch: 200)";
    assert!(
        source.contains(line),
        "models/gaussian_policy.dl changed its episodes(…)"
    );
    let one_pass = d.join("gaussian_one_pass.dl");
    std::fs::write(
        &one_pass,
        source.replace(
            line,
            "episodes(count: 8, gamma: 0.9, lambda: 0.95, epochs: 1, batch: 0)",
        ),
    )
    .expect("write");
    for (model, steps) in [("models/reinforce.dl", "400"), (s(&one_pass), "3200")] {
        let (j, r) = (d.join("jit.jsonl"), d.join("ref.jsonl"));
        ok(&[
            "train",
            model,
            "--seed",
            "2",
            "--steps",
            steps,
            "--metrics",
            s(&j),
        ]);
        ok(&[
            "train",
            model,
            "--seed",
            "2",
            "--steps",
            steps,
            "--engine",
            "reference",
            "--metrics",
            s(&r),
        ]);
        let (j, r) = (episodes(&j), episodes(&r));
        assert_eq!(j.len(), r.len(), "{model}: episodes");
        let mut compared = 0;
        for (a, b) in j.iter().zip(&r) {
            for key in ["return", "loss"] {
                if let (Some(x), Some(y)) = (a[key].as_f64(), b[key].as_f64()) {
                    let tol = 1e-4 * x.abs().max(y.abs()).max(1.0);
                    assert!(
                        (x - y).abs() <= tol,
                        "{model} episode {}: {key} {x} vs {y}",
                        a["episode"]
                    );
                    compared += 1;
                }
            }
        }
        assert!(
            compared >= 2 * j.len().min(8),
            "{model}: compared {compared}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn acting_allocates_no_tensor_per_step() {
    let (setup, _) = session::compile(
        &root().join("models/gaussian_policy.dl"),
        &Overrides::default(),
        EngineKind::Jit,
    )
    .expect("compiles");
    let st = dlc_runtime::trainer::TrainState::fresh(&setup, 0);
    let mut params = st.params.clone();
    let engine = setup.act_engine.as_ref().expect("a policy graph");
    assert_eq!(engine.native_kernels().map(|(n, t)| n == t), Some(true));
    let mut actor = Actor::new(engine, 3);
    actor.hold(&mut params);
    let mut obs = [0.5f32, -0.2, 0.1];
    actor.forward(&obs).expect("acts");
    let (mu, log_std, value) = (actor.pred.clone(), actor.log_std.clone(), actor.value);
    assert_eq!((mu.len(), log_std.len()), (1, 1));
    assert!(mu[0].abs() <= 2.0 && value.is_finite());
    let before = actor.buffers_allocated();
    for i in 0..200 {
        obs[2] = i as f32 * 0.01;
        actor.forward(&obs).expect("acts");
    }
    assert_eq!(
        actor.buffers_allocated(),
        before,
        "acting allocated tensors"
    );
    // The same observation, the same action.
    obs = [0.5, -0.2, 0.1];
    actor.forward(&obs).expect("acts");
    assert_eq!((actor.pred.clone(), actor.log_std.clone()), (mu, log_std));
}

fn write(d: &Path, name: &str, body: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

const QNET: &str = "model Q(observations, actions) {
  l = Dense(observations, actions)
  fn forward(obs: f32[B, observations]) -> f32[B, actions] { l(obs) }
}
";

#[test]
fn bad_sections_name_what_is_wrong() {
    let d = dir("bad");
    let cases: &[(&str, &str, &str)] = &[
        (
            "no_policy.dl",
            "train Q on cartpole {\n  replay(capacity: 100)\n  loss = mean(forward(obs))\n}\n",
            "needs a policy",
        ),
        (
            "no_experience.dl",
            "train Q on cartpole {\n  softmax_policy()\n  loss = mean(forward(obs))\n}\n",
            "needs its experience",
        ),
        (
            "bad_lag.dl",
            "train Q on cartpole {\n  replay()\n  softmax_policy()\n  t = lagged(every: 0)\n  loss = mean(t(obs))\n}\n",
            "lagged takes every: N",
        ),
        (
            "bad_arg.dl",
            "train Q on cartpole {\n  replay(capacty: 100)\n  softmax_policy()\n  loss = mean(forward(obs))\n}\n",
            "replay has no argument `capacty`",
        ),
        (
            "on_data.dl",
            "train Q on digits {\n  replay()\n  loss = mean(forward(x))\n}\n",
            "belongs to training from an environment",
        ),
        (
            "no_log_std.dl",
            "train Q on pendulum {\n  episodes()\n  gaussian_policy()\n  loss = mean(forward(obs))\n}\n",
            "needs `fn log_std(obs)`",
        ),
    ];
    for (name, train, want) in cases {
        let p = write(&d, name, &format!("{QNET}\n{train}"));
        let err = fails(&["check", s(&p)]);
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}:")),
            "{name}: no position in {err}"
        );
    }
    // Errors the runtime finds.
    let reads_next = write(
        &d,
        "reads_next.dl",
        &format!(
            "{QNET}\ntrain Q on cartpole {{\n  episodes()\n  softmax_policy()\n  loss = mean(forward(next_obs))\n}}\n"
        ),
    );
    let err = fails(&["train", s(&reads_next), "--steps", "10"]);
    assert!(
        err.contains("reads `next_obs`, but episodes(…) gives"),
        "{err}"
    );
    let gauss_on_discrete = write(
        &d,
        "gauss.dl",
        "model Q(observations, actions) {
  l = Dense(observations, actions)
  fn forward(obs: f32[B, observations]) -> f32[B, actions] { l(obs) }
  fn log_std(obs: f32[B, observations]) -> f32[B, actions] { l(obs) }
}
train Q on cartpole {
  episodes()
  gaussian_policy()
  loss = mean(forward(obs))
}
",
    );
    let err = fails(&["train", s(&gauss_on_discrete), "--steps", "10"]);
    assert!(
        err.contains("a Gaussian policy needs continuous actions"),
        "{err}"
    );
    let err = fails(&["train", "models/dqn.dl", "--epochs", "2"]);
    assert!(err.contains("environment steps"), "{err}");
    let err = fails(&["train", "models/dqn.dl", "--data", "digits"]);
    assert!(err.contains("trains on the environment cartpole"), "{err}");
    let err = fails(&["bench", "models/reinforce.dl"]);
    assert!(err.contains("env_steps_per_s"), "{err}");
    let err = fails(&["env", "cartpole", "--state", "0,0,0,0", "--actions", "1,2"]);
    assert!(err.contains("not one of 0..1"), "{err}");
    let err = fails(&["env", "acrobot", "--state", "0"]);
    assert!(err.contains("unknown environment `acrobot`"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
