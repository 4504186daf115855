//! Architecture search (`train Controller on architectures`): a run proposes, trains and
//! rewards children the way `dlc train` of the child's own section would, writes one
//! metrics line per controller step and the best child at the end, is reproducible, and
//! bad sections are errors that say what is wrong.

mod common;
use common::{fails, metrics, ok, s, tmp};

/// A child of one or two hidden layers on the embedded digits, its recipe, and a
/// controller over three decisions.
const CHILD: &str =
    "model Child(height, width, classes, layers: 1, width1: 16, act1: relu, width2: 16) {
  l1 = Dense(height * width, width1, activation: act1)
  l2 = if layers >= 2 { Dense(width1, width2, activation: relu) } else { 0 }
  out = Dense(if layers == 1 { width1 } else { width2 }, classes)
  fn forward(x: f32[B, height, width]) -> f32[B, classes] {
    let h = l1(flatten(x))
    out(if layers >= 2 { l2(h) } else { h })
  }
}
train Child on digits {
  loss = softmax_cross_entropy(forward(x), y)
  optimizer = adam(lr: 0.01)
  epochs = 2
  validation = true
}
";

const CONTROLLER: &str = "model Controller(steps, options, hidden: 8) {
  embed = Embedding(options + 1, hidden)
  lstm = Lstm(hidden, hidden)
  head = Dense(hidden, options)
  fn forward(previous: i32[B, steps]) -> f32[B, steps, options] { head(lstm(embed(previous))) }
}
train Controller on architectures {
  search(Child, steps: 4, baseline: 0.5)
  choices(layers: [1, 2], width1: [8, 32], act1: [relu, tanh, sigmoid])
  logits = forward(previous) + 1e9 * (allowed - 1)
  loss = -mean(adv * sum(one_hot(decisions, options) * log_softmax(logits, axis: -1), axis: [1, 2]))
  optimizer = adam(lr: 0.05)
}
";

#[test]
fn a_search_rewards_each_child_with_what_training_it_alone_gives() {
    let file = tmp("search.dl", format!("{CHILD}{CONTROLLER}").as_bytes());
    let run = |name: &str| {
        let m = file.with_extension(format!("{name}.jsonl"));
        ok(&["train", s(&file), "--seed", "5", "--metrics", s(&m)]);
        // (Without the times.)
        let mut lines = metrics(&m);
        for l in &mut lines {
            let o = l.as_object_mut().expect("an object");
            o.remove("compile_s");
            o.remove("train_s");
        }
        lines
    };
    let lines = run("a");
    assert_eq!(lines, run("b"), "a search is reproducible");
    assert_eq!(lines.len(), 5, "{lines:?}");
    let mut best = (f64::MIN, String::new());
    for (i, l) in lines[..4].iter().enumerate() {
        assert_eq!(l["controller_step"], i + 1);
        let arch = l["architecture"]
            .as_str()
            .expect("architecture text")
            .to_string();
        let words: Vec<&str> = arch.split(' ').collect();
        assert!(
            words.len() == 3 && words[0].starts_with("layers="),
            "{arch}"
        );
        let reward = l["reward"].as_f64().expect("reward");
        if reward > best.0 {
            best = (reward, arch.clone());
        }
        // The first step's baseline is its own reward.
        if i == 0 {
            assert_eq!(l["baseline"], l["reward"]);
        }
    }
    let last = &lines[4];
    assert_eq!(last["best_architecture"].as_str(), Some(best.1.as_str()));
    assert_eq!(last["best_reward"].as_f64(), Some(best.0));
    assert!(
        last["best_test_acc"].as_f64().is_some_and(|a| a > 0.5),
        "{last}"
    );
    // The reward of step 1 is the validation accuracy of `dlc train` of the child's own
    // section with the architecture's values, the same seed.
    let child = tmp("child.dl", CHILD.as_bytes());
    let m = child.with_extension("jsonl");
    let arch = lines[0]["architecture"].as_str().unwrap();
    let mut args = vec!["train", s(&child), "--seed", "5", "--metrics", s(&m)];
    let sets: Vec<String> = arch.split(' ').map(|w| w.to_string()).collect();
    for w in &sets {
        args.extend(["--set", w.as_str()]);
    }
    ok(&args);
    let alone = metrics(&m);
    assert_eq!(alone.last().unwrap()["val_acc"], lines[0]["reward"]);
}

#[test]
fn ctrl_c_ends_a_search_with_the_best_architecture_so_far() {
    let file = tmp(
        "search_sigint.dl",
        format!("{CHILD}{CONTROLLER}").as_bytes(),
    );
    let m = file.with_extension("jsonl");
    let args = ["train", s(&file), "--steps", "500", "--metrics", s(&m)];
    let (code, printed) = common::interrupt_at(&args, None, "step   2 ");
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("interrupted after controller step")
            && printed.contains("(not trained again, no test accuracy)"),
        "{printed}"
    );
    // One line per child that trained to the end, then the best of them.
    let lines = metrics(&m);
    let (last, steps) = lines.split_last().expect("lines");
    assert_eq!(last["interrupted_after_step"], steps.len(), "{last}");
    assert!(steps.len() >= 2 && steps.len() < 500, "{}", steps.len());
    let best = steps
        .iter()
        .map(|l| l["reward"].as_f64().expect("reward"))
        .fold(f64::MIN, f64::max);
    assert_eq!(last["best_reward"].as_f64(), Some(best));
    assert!(last.get("best_test_acc").is_none(), "{last}");
}

#[test]
fn bad_search_sections_are_errors() {
    let check = |name: &str, src: String| fails(&["check", s(&tmp(name, src.as_bytes()))]);
    let e = check(
        "unknown.dl",
        format!(
            "{CHILD}{}",
            CONTROLLER.replace("width1: [8, 32]", "widht1: [8, 32]")
        ),
    );
    assert!(
        e.contains("`widht1` is not a parameter of model `Child`"),
        "{e}"
    );
    let e = check(
        "nochoices.dl",
        format!(
            "{CHILD}{}",
            CONTROLLER.replace(
                "choices(layers: [1, 2], width1: [8, 32], act1: [relu, tanh, sigmoid])",
                ""
            )
        ),
    );
    assert!(e.contains("needs choices("), "{e}");
    // The other section must train the child.
    let other = CHILD.replace("train Child on digits", "train Controller on digits");
    let e = fails(&[
        "train",
        s(&tmp("other.dl", format!("{other}{CONTROLLER}").as_bytes())),
    ]);
    assert!(e.contains("the search's child is `Child`"), "{e}");
    // Two sections only when one searches.
    let e = check(
        "two.dl",
        format!("{CHILD}{CHILD}")
            .replace("model Child(", "model C2(")
            .replacen("model C2(", "model Child(", 1),
    );
    assert!(e.contains("only one training section per file"), "{e}");
    let e = check(
        "notsearch.dl",
        CHILD.replace(
            "  validation = true\n",
            "  validation = true\n  search(Child, steps: 3)\n",
        ),
    );
    assert!(e.contains("belongs to an architecture search"), "{e}");
    let e = check(
        "ifs.dl",
        CHILD.replace("if layers >= 2 { l2(h) }", "if h { l2(h) }"),
    );
    assert!(
        e.contains("the condition of `if` must be known when compiling"),
        "{e}"
    );
    // The children must hold out validation data: their reward.
    let file = tmp(
        "noval.dl",
        format!("{}{CONTROLLER}", CHILD.replace("  validation = true\n", "")).as_bytes(),
    );
    let e = fails(&["train", s(&file)]);
    assert!(e.contains("validation = true"), "{e}");
    let e = fails(&["train", s(&file), "--save", "/tmp/x.safetensors"]);
    assert!(e.contains("keeps no checkpoint"), "{e}");
    let e = fails(&["train", s(&file), "--epochs", "3"]);
    assert!(e.contains("--epochs and --batch do not apply"), "{e}");
    let e = check(
        "twice.dl",
        format!(
            "{CHILD}{}",
            CONTROLLER.replace(
                "  optimizer = adam(lr: 0.05)",
                "  choices(layers: [1, 2])\n  optimizer = adam(lr: 0.05)"
            )
        ),
    );
    assert!(e.contains("a second choices statement"), "{e}");
    let e = check(
        "envsteps.dl",
        format!(
            "{CHILD}{}",
            CONTROLLER.replace(
                "  optimizer = adam(lr: 0.05)",
                "  steps = 10\n  optimizer = adam(lr: 0.05)"
            )
        ),
    );
    assert!(
        e.contains("counts controller steps with search(Child, steps: N)"),
        "{e}"
    );
    let e = fails(&["bench", s(&file)]);
    assert!(
        e.contains("an architecture search reports each child's"),
        "{e}"
    );
}
