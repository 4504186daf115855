//! Architecture search by reinforcement learning (Zoph & Le): each controller step samples
//! one decision per step of the controller's recurrence (the child's parameters listed in
//! `choices(…)`), compiles that child from its section of the file, trains it with the
//! section's recipe (the same epochs, batch, optimizer and seed for every child), takes its
//! validation accuracy as the reward, and updates the controller by REINFORCE with a
//! moving-average baseline. At the end the best child is trained again and tested.

use crate::engine::{Engine, EngineKind};
use crate::metrics::MetricsSink;
use crate::session::{self, Overrides, Setup};
use crate::trainer::{self, RunLimits, StepRunner, TrainState};
use dlc_compiler::lower::Search;
use dlc_compiler::rng;
use dlc_data::Dataset;
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::{Map, json};
use std::path::Path;
use std::time::Instant;

/// A child proposed by the controller: an option index per decision.
pub type Architecture = Vec<usize>;

/// The child's parameters as `--set` values (`width1=64`, `act1=relu`).
pub fn settings(search: &Search, arch: &[usize]) -> Vec<(String, String)> {
    search
        .decisions
        .iter()
        .zip(arch)
        .map(|(d, &i)| (d.name.clone(), d.options[i].to_string()))
        .collect()
}

/// The architecture as text: `layers=2 width1=64 act1=relu …`.
pub fn describe(search: &Search, arch: &[usize]) -> String {
    settings(search, arch)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `allowed` [steps, options]: 1 where a decision has that option.
fn allowed(search: &Search) -> ArrayD<f32> {
    let k = search.options();
    let mut a = Array2::<f32>::zeros((search.decisions.len(), k));
    for (t, d) in search.decisions.iter().enumerate() {
        for j in 0..d.options.len() {
            a[[t, j]] = 1.0;
        }
    }
    a.into_dyn()
}

/// `previous` [1, steps]: the start token (`options`) and then each decision but the last.
fn previous(search: &Search, arch: &[usize]) -> ArrayD<f32> {
    let mut p = vec![search.options() as f32];
    p.extend(arch[..arch.len() - 1].iter().map(|&i| i as f32));
    ArrayD::from_shape_vec(IxDyn(&[1, arch.len()]), p).expect("one row")
}

/// Sample an architecture from the controller, one decision at a time: decision t from the
/// softmax of the controller's logits at step t over that decision's options, given the
/// decisions before it. The draws are counter-based on (seed, controller step, t).
pub fn sample(
    act: &Engine,
    params: &crate::checkpoint::Tensors,
    search: &Search,
    seed: u64,
    step: u64,
) -> Result<Architecture, String> {
    let d = search.decisions.len();
    let k = search.options();
    let mut arch = vec![0usize; d];
    let key = rng::name_key("architecture search");
    for t in 0..d {
        let mut env = trainer::leaf_env(params, seed, step);
        env.values
            .insert("previous".into(), previous(search, &arch));
        let logits = act.run(&env, &["pred"])?.remove(0);
        if logits.shape() != [1, d, k] {
            return Err(format!(
                "the controller's forward(previous) must return its logits as f32[B, steps, options] = [1, {d}, {k}]; it returned {:?}",
                logits.shape()
            ));
        }
        let n = search.decisions[t].options.len();
        let row: Vec<f64> = (0..n).map(|j| logits[[0, t, j]] as f64).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut u = rng::uniform(seed, key, step, t as u64) * total;
        // (Rounding can leave u at the end: the last option that can be drawn.)
        arch[t] = w.iter().rposition(|&x| x > 0.0).unwrap_or(n - 1);
        for (j, wj) in w.iter().enumerate() {
            if u < *wj {
                arch[t] = j;
                break;
            }
            u -= wj;
        }
    }
    Ok(arch)
}

/// The children of a search: their program and data set, compiled and trained one by one.
pub struct Children {
    program: dlc_compiler::lower::Program,
    ov: Overrides,
    kind: EngineKind,
    pub data: Dataset,
    seed: u64,
}

/// A child trained: its validation and test accuracy, and how long compiling and
/// training took.
pub struct Trained {
    /// None for the final model, which trains on the validation examples.
    pub val_acc: Option<f64>,
    pub test_acc: f64,
    pub compile_s: f64,
    pub train_s: f64,
    pub params: usize,
}

impl Children {
    /// The children of `setup`'s search, reading the data set the flags name (else the
    /// child section's), loaded once.
    pub fn new(setup: &Setup, ov: &Overrides, kind: EngineKind, seed: u64) -> Result<Self, String> {
        let search = setup
            .cfg
            .search
            .as_ref()
            .ok_or("not an architecture search")?;
        let program = setup
            .program
            .children()
            .ok_or("an architecture search needs its child's training section")?;
        if program.train_def().map(|t| t.model.name.as_str()) != Some(search.child.as_str()) {
            return Err(format!(
                "{}: the search's child is `{}`, so the file's other training section must train it (`train {} on DATA {{ … }}`)",
                setup.program.source.name, search.child, search.child
            ));
        }
        let ov = Overrides {
            data: ov.data.clone(),
            data_args: ov.data_args.clone(),
            threads: ov.threads,
            no_opt: ov.no_opt,
            ..Overrides::default()
        };
        // The data set, once: the first option of every decision compiles it.
        let first = vec![0; search.decisions.len()];
        let mut p = program.clone();
        p.set_params(&settings(search, &first))?;
        let (setup0, path) = session::compile_program(p, &ov, kind)?;
        let data = session::load_data(&setup0.cfg, path.as_deref(), None)?;
        if !matches!(
            data.task,
            dlc_data::Task::Classification { .. } | dlc_data::Task::Binary
        ) {
            return Err(format!(
                "{}: the reward is the children's validation accuracy, so their data set must be a classification task; {} is not",
                setup.program.source.name, data.name
            ));
        }
        if data.val.is_none() {
            return Err(format!(
                "{}: the children's section must hold out validation data (`validation = true`): their validation accuracy is the reward",
                setup.program.source.name
            ));
        }
        Ok(Children {
            program,
            ov,
            kind,
            data,
            seed,
        })
    }

    /// Compile and train the child with these settings on the training examples; or, for
    /// the final model (`with_validation`), on the training and validation examples together
    /// (for a graph: the validation nodes' labels join the training nodes'), without
    /// validation.
    pub fn train(
        &self,
        sets: &[(String, String)],
        with_validation: bool,
    ) -> Result<Trained, String> {
        let merged;
        let data = if with_validation {
            let val = self.data.val.as_ref().expect("checked in new");
            let mut d = self.data.clone();
            if d.sparse.is_empty() {
                d.train.x.extend_from_slice(&val.x);
                d.train.y.extend_from_slice(&val.y);
                d.train.n += val.n;
            } else {
                // A graph's splits are all its nodes, labelled only inside the split.
                for (t, v) in d.train.y.iter_mut().zip(&val.y) {
                    if *t < 0.0 {
                        *t = *v;
                    }
                }
            }
            d.val = None;
            merged = d;
            &merged
        } else {
            &self.data
        };
        let t0 = Instant::now();
        let mut p = self.program.clone();
        p.set_params(sets)?;
        let (setup, _) = session::compile_program(p, &self.ov, self.kind)?;
        let compile_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let limits = RunLimits {
            epochs: setup.cfg.epochs,
            steps: None,
            stall_at_step: None,
            quiet: true,
            check_numerics: false,
        };
        let mut sink = MetricsSink::open(None, self.kind.name(), 0, Map::new())?;
        let mut st = trainer::train(
            &setup,
            data,
            TrainState::fresh(&setup, self.seed),
            &limits,
            &mut sink,
            &mut |_| Ok(()),
        )?;
        if let Some(best) = st.best.take() {
            st.params = best;
        }
        let train_s = t1.elapsed().as_secs_f64();
        let acc = |split| -> Result<f64, String> {
            trainer::evaluate(&setup.eval_engine, &st.params, split, data, self.seed)
                .map(|s| s.acc.unwrap_or(0.0))
        };
        Ok(Trained {
            val_acc: data.val.as_ref().map(acc).transpose()?,
            test_acc: acc(&data.test)?,
            compile_s,
            train_s,
            params: st.params.values().map(|a| a.len()).sum(),
        })
    }
}

/// Run the search of `setup` for `steps` controller steps (the section's when None).
/// Ctrl-C (`interrupt`) ends it after the last child that trained to the end, with the
/// best architecture so far (not trained again).
pub fn run(
    setup: &Setup,
    ov: &Overrides,
    kind: EngineKind,
    seed: u64,
    steps: Option<u64>,
    metrics: Option<&Path>,
) -> Result<(), String> {
    let search = setup
        .cfg
        .search
        .as_ref()
        .ok_or("not an architecture search")?;
    let act = setup.act_engine.as_ref().ok_or("no controller graph")?;
    if search.decisions.is_empty() {
        return Err("an architecture search needs at least one decision".into());
    }
    let [objective] = &setup.steps[..] else {
        return Err("an architecture search has one objective, the controller's".into());
    };
    let children = Children::new(setup, ov, kind, seed)?;
    let mut sink = MetricsSink::open(metrics, kind.name(), setup.kernels(), Map::new())?;
    let total = steps.map_or(search.steps, |s| s as usize);
    let data = &children.data;
    say!(
        "searching {:.0} architectures of {} on {} ({} train / {} validation / {} test examples) for {total} controller steps, engine {}",
        search
            .decisions
            .iter()
            .map(|d| d.options.len() as f64)
            .product::<f64>(),
        search.child,
        data.name,
        data.train.n,
        data.val.as_ref().map_or(0, |v| v.n),
        data.test.n,
        kind.name()
    );
    let mut st = TrainState::fresh(setup, seed);
    let runner = StepRunner::new(&st, objective);
    let allowed = allowed(search);
    let mut baseline: Option<f64> = None;
    let mut best: Option<(f64, Architecture)> = None;
    let mut done = 0;
    for k in 0..total {
        let arch = sample(act, &st.params, search, seed, st.step)?;
        let child = children.train(&settings(search, &arch), false)?;
        // Ctrl-C stopped this child's training: its reward is no measure of it.
        if crate::interrupt::requested() {
            break;
        }
        done = k + 1;
        let reward = child.val_acc.ok_or("a child without validation examples")?;
        let b = baseline.unwrap_or(reward);
        let adv = reward - b;
        baseline = Some(search.baseline * b + (1.0 - search.baseline) * reward);
        let ids = ArrayD::from_shape_vec(
            IxDyn(&[1, arch.len()]),
            arch.iter().map(|&i| i as f32).collect(),
        )
        .expect("one row");
        let row = |v: f64| ArrayD::from_elem(IxDyn(&[1]), v as f32);
        let mut inputs = vec![
            ("previous".to_string(), previous(search, &arch)),
            ("decisions".to_string(), ids),
            ("allowed".to_string(), allowed.clone()),
            ("reward".to_string(), row(reward)),
            ("adv".to_string(), row(adv)),
        ];
        let out = runner.run_named(&objective.engine, &mut st, &mut inputs)?;
        st.step += 1;
        if !out.loss.is_finite() {
            return Err(format!(
                "controller step {}: the loss is {}; try a smaller learning rate (--lr)",
                k + 1,
                out.loss
            ));
        }
        if best.as_ref().is_none_or(|(r, _)| reward > *r) {
            best = Some((reward, arch.clone()));
        }
        let mut m = Map::new();
        m.insert("controller_step".into(), json!(k + 1));
        m.insert("reward".into(), json!(reward));
        m.insert("baseline".into(), json!(b));
        m.insert("architecture".into(), json!(describe(search, &arch)));
        m.insert("child_params".into(), json!(child.params));
        m.insert("compile_s".into(), json!(child.compile_s));
        m.insert("train_s".into(), json!(child.train_s));
        say!(
            "step {:>3}  reward {reward:.4}  baseline {b:.4}  {}  ({} parameters, compiled in {:.0} ms, trained in {:.0} ms)",
            k + 1,
            describe(search, &arch),
            child.params,
            child.compile_s * 1e3,
            child.train_s * 1e3
        );
        sink.write(m)?;
    }
    if crate::interrupt::requested() {
        let mut m = Map::new();
        m.insert("interrupted_after_step".into(), json!(done));
        let best = match &best {
            Some((reward, arch)) => {
                m.insert("best_architecture".into(), json!(describe(search, arch)));
                m.insert("best_reward".into(), json!(reward));
                format!(
                    "best so far {}: validation {reward:.4}",
                    describe(search, arch)
                )
            }
            None => "no architecture was evaluated".into(),
        };
        say!(
            "interrupted after controller step {done}; {best} (not trained again, no test accuracy)"
        );
        return sink.write(m);
    }
    let (reward, arch) = best.ok_or("no controller step ran")?;
    // The best child again, from scratch with the same recipe on the training and
    // validation examples, and its test accuracy.
    let again = children.train(&settings(search, &arch), true)?;
    let mut m = Map::new();
    m.insert("best_architecture".into(), json!(describe(search, &arch)));
    m.insert("best_reward".into(), json!(reward));
    m.insert("best_test_acc".into(), json!(again.test_acc));
    say!(
        "best {}: validation {reward:.4}; trained again on training and validation examples: test {:.4}",
        describe(search, &arch),
        again.test_acc
    );
    sink.write(m)
}
