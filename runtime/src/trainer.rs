//! The training loop: seeded shuffling, minibatches (the last partial batch is kept),
//! one compiled training step per batch, evaluation, early stopping that restores the
//! best weights, metrics lines and checkpoints that resume bit-exactly (written at the end
//! of every epoch, so a killed run resumes from its last finished epoch).

use crate::checkpoint::{Checkpoint, Tensors};
use crate::engine::Engine;
use crate::init::init_param;
use crate::metrics::{MetricsSink, Progress};
use crate::session::Setup;
use dlc_compiler::interp::Env;
use dlc_compiler::rng;
use dlc_data::{Dataset, Split, Task};
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Instant;

/// Everything that changes while training, and all of it goes into a checkpoint.
#[derive(Clone, Debug)]
pub struct TrainState {
    pub params: Tensors,
    pub opt: Tensors,
    /// Epochs completed.
    pub epoch: usize,
    /// Training steps completed.
    pub step: u64,
    pub seed: u64,
    pub best: Option<Tensors>,
    pub best_val_loss: f64,
    pub best_epoch: usize,
    pub patience_left: usize,
    pub stopped: bool,
}

impl TrainState {
    pub fn fresh(setup: &Setup, seed: u64) -> TrainState {
        let params = setup
            .params
            .iter()
            .map(|p| (p.name.clone(), init_param(p, seed)))
            .collect();
        let opt = setup
            .states
            .iter()
            .map(|s| (s.name.clone(), ArrayD::zeros(IxDyn(&s.shape))))
            .collect();
        let patience = setup.cfg.early_stopping.as_ref().map_or(0, |e| e.patience);
        TrainState {
            params,
            opt,
            epoch: 0,
            step: 0,
            seed,
            best: None,
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            patience_left: patience,
            stopped: false,
        }
    }

    /// The checkpoint of this state on data set or environment `data`: parameters,
    /// optimizer state, the best weights, the counters and the settings in force.
    pub fn checkpoint_on(&self, setup: &Setup, data: &str) -> Checkpoint {
        let mut ck = Checkpoint::default();
        ck.tensors.extend(self.params.clone());
        ck.tensors.extend(self.opt.clone());
        if let Some(best) = &self.best {
            for (k, v) in best {
                ck.tensors.insert(format!("best.{k}"), v.clone());
            }
        }
        let m = &mut ck.meta;
        m.insert("model".into(), setup.model_name());
        m.insert("data".into(), data.to_string());
        m.insert("optimizer".into(), setup.cfg.optimizer.name().into());
        m.insert("epoch".into(), self.epoch.to_string());
        m.insert("step".into(), self.step.to_string());
        m.insert("batch".into(), setup.cfg.batch.to_string());
        m.insert("seed".into(), self.seed.to_string());
        m.insert("best_val_loss".into(), format!("{:e}", self.best_val_loss));
        m.insert("best_epoch".into(), self.best_epoch.to_string());
        m.insert("patience_left".into(), self.patience_left.to_string());
        m.insert("stopped".into(), self.stopped.to_string());
        m.insert("set".into(), crate::checkpoint::pairs_meta(&setup.sets));
        m.insert(
            "data_arg".into(),
            crate::checkpoint::pairs_meta(&setup.data_arg_flags),
        );
        m.insert(
            "data_args".into(),
            Value::Object(crate::session::args_json(&setup.cfg.data_args)).to_string(),
        );
        ck
    }

    pub fn to_checkpoint(&self, setup: &Setup, data: &Dataset) -> Checkpoint {
        let mut ck = self.checkpoint_on(setup, &data.name);
        if let Some(s) = &data.scaling {
            ck.tensors.insert(
                "scaling.mean".into(),
                ArrayD::from_shape_vec(IxDyn(&[s.mean.len()]), s.mean.clone()).expect("1-D"),
            );
            ck.tensors.insert(
                "scaling.std".into(),
                ArrayD::from_shape_vec(IxDyn(&[s.std.len()]), s.std.clone()).expect("1-D"),
            );
        }
        if let Some(vocab) = &data.vocab {
            ck.meta.insert(
                crate::checkpoint::VOCAB_KEY.into(),
                crate::checkpoint::vocab_meta(vocab),
            );
        }
        ck
    }

    /// Restore from a checkpoint, checking that it fits the model and optimizer.
    pub fn from_checkpoint(
        setup: &Setup,
        ck: &Checkpoint,
        path: &Path,
    ) -> Result<TrainState, String> {
        let fresh = TrainState::fresh(setup, 0);
        // A shape mismatch after `--set` most likely comes from the values set.
        let recorded = ck.recorded(path)?.sets;
        let sets_note = if recorded.is_empty() && setup.sets.is_empty() {
            String::new()
        } else {
            let show = |l: &[(String, String)]| {
                if l.is_empty() {
                    "no --set".to_string()
                } else {
                    let v: Vec<String> = l.iter().map(|(k, v)| format!("--set {k}={v}")).collect();
                    v.join(" ")
                }
            };
            format!(
                " (the checkpoint was trained with {}; this run has {})",
                show(&recorded),
                show(&setup.sets)
            )
        };
        let take = |names: &Tensors, prefix: &str| -> Result<Tensors, String> {
            let mut out = Tensors::new();
            for (k, v) in names {
                let key = format!("{prefix}{k}");
                let t = ck.tensors.get(&key).ok_or_else(|| {
                    format!("{}: checkpoint has no tensor `{key}` (was it saved from another model or optimizer?)", path.display())
                })?;
                if t.shape() != v.shape() {
                    return Err(format!(
                        "{}: `{key}` has shape {:?}, the model needs {:?}{sets_note}",
                        path.display(),
                        t.shape(),
                        v.shape()
                    ));
                }
                out.insert(k.clone(), t.clone());
            }
            Ok(out)
        };
        let params = take(&fresh.params, "")?;
        let best = if ck.tensors.keys().any(|k| k.starts_with("best.")) {
            Some(take(&fresh.params, "best.")?)
        } else {
            None
        };
        let opt =
            if ck.meta.get("optimizer").map(String::as_str) == Some(setup.cfg.optimizer.name()) {
                take(&fresh.opt, "")?
            } else {
                return Err(format!(
                    "{}: checkpoint was trained with {}, not {}; resume with --optimizer {}",
                    path.display(),
                    ck.meta.get("optimizer").map(String::as_str).unwrap_or("?"),
                    setup.cfg.optimizer.name(),
                    ck.meta.get("optimizer").map(String::as_str).unwrap_or("?")
                ));
            };
        let best_val_loss: f64 = ck
            .meta
            .get("best_val_loss")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::INFINITY);
        Ok(TrainState {
            params,
            opt,
            epoch: ck.meta_num("epoch", path)?,
            step: ck.meta_num("step", path)?,
            seed: ck.meta_num("seed", path)?,
            best,
            best_val_loss,
            best_epoch: ck.meta_num("best_epoch", path).unwrap_or(0),
            patience_left: ck.meta_num("patience_left", path).unwrap_or(0),
            stopped: ck.meta.get("stopped").is_some_and(|v| v == "true"),
        })
    }
}

/// A batch of examples as tensors `x` [n, …x_shape] and `y` [n, …y_shape] ([n] labels,
/// [n, 1] targets, or [n, seq] labels per position).
pub fn batch(
    split: &Split,
    rows: &[usize],
    x_shape: &[usize],
    y_shape: &[usize],
) -> (ArrayD<f32>, ArrayD<f32>) {
    let w = split.example_len();
    let yw: usize = y_shape.iter().product();
    let mut xs = Vec::with_capacity(rows.len() * w);
    let mut ys = Vec::with_capacity(rows.len() * yw);
    for &r in rows {
        xs.extend_from_slice(&split.x[r * w..(r + 1) * w]);
        ys.extend_from_slice(&split.y[r * yw..(r + 1) * yw]);
    }
    let mut shape = vec![rows.len()];
    shape.extend_from_slice(x_shape);
    let x = ArrayD::from_shape_vec(IxDyn(&shape), xs).expect("batch x shape");
    let mut yshape = vec![rows.len()];
    yshape.extend_from_slice(y_shape);
    (
        x,
        ArrayD::from_shape_vec(IxDyn(&yshape), ys).expect("batch y shape"),
    )
}

/// The order of training examples in an epoch: a Fisher–Yates shuffle keyed by
/// (seed, epoch) alone, so resuming at an epoch boundary reproduces it.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng::bits(seed, 0x5348_5546, epoch as u64, i as u64) % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// One objective's training step: the state's tensors move into the engine's inputs and
/// the updated ones move back, so a step copies no parameters. The objective's own
/// parameters and optimizer states are updated; every other parameter is an input only.
pub struct StepRunner {
    /// Parameters (and then states) the step updates.
    params: Vec<String>,
    states: Vec<String>,
    /// Parameters it only reads.
    read: Vec<String>,
    outputs: Vec<String>,
    /// Whether the step computes `pred` (the first objective's does).
    has_pred: bool,
    /// The reported values it computes (the first objective's step), by name.
    pub reports: Vec<String>,
}

impl StepRunner {
    pub fn new(st: &TrainState, step: &crate::session::ObjectiveStep) -> StepRunner {
        let own: Vec<&str> = step.train.params.iter().map(|p| p.name.as_str()).collect();
        let params: Vec<String> = st
            .params
            .keys()
            .filter(|k| own.contains(&k.as_str()))
            .cloned()
            .collect();
        let read: Vec<String> = st
            .params
            .keys()
            .filter(|k| !own.contains(&k.as_str()))
            .cloned()
            .collect();
        let states: Vec<String> = step.train.states.iter().map(|s| s.name.clone()).collect();
        let has_pred = step.train.graph.output("pred").is_some();
        let mut outputs = vec!["loss".to_string()];
        if has_pred {
            outputs.push("pred".to_string());
        }
        outputs.push("grad_sq_norm".to_string());
        outputs.extend(params.iter().map(|p| format!("new:{p}")));
        outputs.extend(states.iter().map(|s| format!("new:{s}")));
        // Values the section reports (`metrics = [...]`), last.
        let reports: Vec<String> = step
            .train
            .graph
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| {
                !matches!(n.as_str(), "loss" | "pred" | "grad_sq_norm") && !n.starts_with("new:")
            })
            .collect();
        outputs.extend(reports.iter().cloned());
        StepRunner {
            params,
            states,
            read,
            outputs,
            has_pred,
            reports,
        }
    }

    /// Run one objective's step on a batch (the caller counts the step, `st.step += 1`,
    /// once every objective has run on it); returns the loss, the predictions, the batch's inputs
    /// (for the caller to reuse) and the global gradient norm before clipping.
    pub fn run(
        &self,
        engine: &Engine,
        st: &mut TrainState,
        x: ArrayD<f32>,
        y: &ArrayD<f32>,
    ) -> Result<StepOut, String> {
        let mut inputs = vec![("x".to_string(), x), ("y".to_string(), y.clone())];
        let mut out = self.run_named(engine, st, &mut inputs)?;
        out.x = inputs.swap_remove(0).1;
        Ok(out)
    }

    /// [`run`](Self::run) on named inputs (the first one's rows are the batch), which
    /// the step borrows and gives back in `inputs`; the `x` of the result is empty.
    pub fn run_named(
        &self,
        engine: &Engine,
        st: &mut TrainState,
        inputs: &mut Vec<(String, ArrayD<f32>)>,
    ) -> Result<StepOut, String> {
        let mut env = Env::new(st.seed, st.step);
        let rows = inputs
            .first()
            .map_or(0, |(_, a)| a.shape().first().copied().unwrap_or(1));
        env.sizes.insert("B".into(), rows);
        env.values.extend(std::mem::take(&mut st.params));
        for name in &self.states {
            let v = st
                .opt
                .remove(name)
                .ok_or_else(|| format!("no optimizer state {name}"))?;
            env.values.insert(name.clone(), v);
        }
        for (name, a) in inputs.iter_mut() {
            env.values.insert(name.clone(), std::mem::take(a));
        }
        env.values.insert(
            "step".into(),
            ArrayD::from_elem(IxDyn(&[]), (st.step + 1) as f32),
        );
        let refs: Vec<&str> = self.outputs.iter().map(|s| s.as_str()).collect();
        // new:p may be written over p (the old values are not needed after the step).
        let skip = if self.has_pred { 3 } else { 2 };
        let donate: Vec<(&str, &str)> = refs[skip..refs.len() - self.reports.len()]
            .iter()
            .zip(self.params.iter().chain(&self.states))
            .map(|(o, l)| (*o, l.as_str()))
            .collect();
        let result = engine.run_donating(&mut env, &refs, &donate);
        for (name, a) in inputs.iter_mut() {
            if let Some(v) = env.values.remove(name.as_str()) {
                *a = v;
            }
        }
        let mut res = match result {
            Ok(r) => r.into_iter(),
            Err(e) => {
                // The state gets its tensors back.
                for name in self.params.iter().chain(&self.read) {
                    if let Some(v) = env.values.remove(name) {
                        st.params.insert(name.clone(), v);
                    }
                }
                for name in self.states.iter() {
                    if let Some(v) = env.values.remove(name) {
                        st.opt.insert(name.clone(), v);
                    }
                }
                return Err(e);
            }
        };
        let loss = res
            .next()
            .and_then(|l| l.iter().next().copied())
            .unwrap_or(f32::NAN);
        let pred = if self.has_pred {
            Some(res.next().ok_or("the step gave no prediction")?)
        } else {
            None
        };
        let grad_norm = res
            .next()
            .and_then(|l| l.iter().next().copied())
            .map_or(f32::NAN, f32::sqrt);
        for (i, name) in self.params.iter().chain(&self.states).enumerate() {
            let new = res.next().ok_or("the step gave too few outputs")?;
            let slot = if i < self.params.len() {
                &mut st.params
            } else {
                &mut st.opt
            };
            slot.insert(name.clone(), new);
            // The old tensor's buffer serves the next step.
            if let Some(old) = env.values.remove(name) {
                engine.recycle(old);
            }
        }
        let reports: Vec<f32> = res
            .map(|r| r.iter().next().copied().unwrap_or(f32::NAN))
            .collect();
        for name in &self.read {
            let v = env.values.remove(name).ok_or("the step lost a parameter")?;
            st.params.insert(name.clone(), v);
        }
        Ok(StepOut {
            loss,
            pred,
            x: ArrayD::zeros(IxDyn(&[0])),
            grad_norm,
            reports,
        })
    }
}

/// What one training step gives back.
pub struct StepOut {
    pub loss: f32,
    /// The predictions (`forward(x)`), from the first objective's step.
    pub pred: Option<ArrayD<f32>>,
    /// The batch's inputs, for the caller to reuse.
    pub x: ArrayD<f32>,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// The reported values (`StepRunner::reports`), in order.
    pub reports: Vec<f32>,
}

/// Loss and task metrics of a set of predictions.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub loss: f64,
    pub acc: Option<f64>,
    pub mse: Option<f64>,
    pub r2: Option<f64>,
    /// Each objective's mean value, for a section with several (their sum is `loss`).
    pub parts: Vec<(String, f64)>,
}

/// Accumulates per-batch losses (weighted by batch size) and predictions.
struct Tally {
    task: Task,
    n: usize,
    loss_sum: f64,
    /// Predictions compared with a label (examples, or positions for per-position
    /// labels) and how many were right.
    judged: usize,
    correct: usize,
    sq_err: f64,
    ys: Vec<f64>,
}

impl Tally {
    fn new(task: Task) -> Tally {
        Tally {
            task,
            n: 0,
            loss_sum: 0.0,
            judged: 0,
            correct: 0,
            sq_err: 0.0,
            ys: Vec::new(),
        }
    }

    fn add(&mut self, loss: f32, pred: &ArrayD<f32>, y: &ArrayD<f32>) {
        let b = y.shape()[0];
        self.n += b;
        self.loss_sum += loss as f64 * b as f64;
        // Predictions are compared with the labels only when they are shaped as the task's
        // answers (an autoencoder's reconstructions of MNIST digits have no accuracy).
        let fits = match self.task {
            Task::Classification { classes } => pred.len() == y.len() * classes,
            Task::Binary | Task::Regression => pred.len() == y.len(),
        };
        if !fits {
            return;
        }
        match self.task {
            Task::Classification { classes } => {
                // One row of scores per label: per example ([B] labels, [B, C] scores)
                // or per position ([B, T] labels, [B, T, C] scores).
                let p = pred.as_standard_layout();
                let flat = p.as_slice().expect("standard layout");
                for (i, &label) in y.iter().enumerate() {
                    // A negative label is no label (a graph's nodes outside the split).
                    if label < 0.0 {
                        continue;
                    }
                    self.judged += 1;
                    let row = &flat[i * classes..(i + 1) * classes];
                    let mut best = 0;
                    for (k, &v) in row.iter().enumerate() {
                        if v > row[best] {
                            best = k;
                        }
                    }
                    self.correct += usize::from(best as f32 == label);
                }
            }
            Task::Binary => {
                for (p, t) in pred.iter().zip(y.iter()) {
                    self.correct += usize::from((*p > 0.5) == (*t > 0.5));
                }
                self.judged += y.len();
            }
            Task::Regression => {
                for (p, t) in pred.iter().zip(y.iter()) {
                    self.sq_err += (*p as f64 - *t as f64).powi(2);
                    self.ys.push(*t as f64);
                }
            }
        }
    }

    fn scores(&self) -> Scores {
        let n = self.n.max(1) as f64;
        let mut s = Scores {
            loss: self.loss_sum / n,
            ..Scores::default()
        };
        match self.task {
            _ if self.judged == 0 && self.ys.is_empty() => {}
            Task::Classification { .. } | Task::Binary => {
                s.acc = Some(self.correct as f64 / self.judged.max(1) as f64)
            }
            Task::Regression => {
                let mse = self.sq_err / n;
                let mean = self.ys.iter().sum::<f64>() / n;
                let var = self.ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
                s.mse = Some(mse);
                s.r2 = Some(if var > 0.0 { 1.0 - mse / var } else { 0.0 });
            }
        }
        s
    }
}

pub(crate) fn leaf_env(params: &Tensors, seed: u64, step: u64) -> Env<f32> {
    let mut env = Env::new(seed, step);
    for (k, v) in params {
        env.values.insert(k.clone(), v.clone());
    }
    env
}

/// Loss and metrics of `params` on a split, in evaluation mode (no dropout).
/// A data set's sparse inputs as the arrays the graph reads (`adj.indptr`, …).
pub fn sparse_inputs(data: &Dataset) -> Vec<(String, ArrayD<f32>)> {
    let mut out = Vec::new();
    for m in &data.sparse {
        for (part, v) in [
            ("indptr", &m.indptr),
            ("indices", &m.indices),
            ("values", &m.values),
        ] {
            out.push((
                format!("{}.{part}", m.name),
                ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.clone()).expect("1-D"),
            ));
        }
    }
    out
}

pub fn evaluate(
    engine: &Engine,
    params: &Tensors,
    split: &Split,
    data: &Dataset,
    seed: u64,
) -> Result<Scores, String> {
    evaluate_perturbed(engine, params, split, data, seed, &mut |_, _, _, _| Ok(()))
}

/// What changes a batch of inputs before evaluation (an adversarial attack): it gets the
/// rows of the split, the inputs to change in place, the labels, and the run's
/// environment (the parameters; it may set leaves there to run a graph, and the batch's
/// `x` and `y` replace them afterwards).
pub type Perturb<'a> =
    dyn FnMut(&[usize], &mut ArrayD<f32>, &ArrayD<f32>, &mut Env<f32>) -> Result<(), String> + 'a;

/// [`evaluate`] on inputs changed by `perturb` first.
pub fn evaluate_perturbed(
    engine: &Engine,
    params: &Tensors,
    split: &Split,
    data: &Dataset,
    seed: u64,
    perturb: &mut Perturb,
) -> Result<Scores, String> {
    let mut tally = Tally::new(data.task);
    // The objectives of a section with several (outputs besides `loss` and `pred`).
    let objectives: Vec<String> = engine
        .outputs()
        .into_iter()
        .filter(|n| n != "loss" && n != "pred")
        .collect();
    let mut wanted = vec!["loss", "pred"];
    wanted.extend(objectives.iter().map(|s| s.as_str()));
    let mut parts = vec![0.0f64; objectives.len()];
    let rows: Vec<usize> = (0..split.n).collect();
    // A graph is evaluated whole.
    let chunk_rows = if data.sparse.is_empty() {
        1024
    } else {
        split.n.max(1)
    };
    let graph_inputs = sparse_inputs(data);
    for chunk in rows.chunks(chunk_rows) {
        let (mut x, y) = batch(split, chunk, &data.x_shape, &data.y_shape);
        let mut env = leaf_env(params, seed, 0);
        perturb(chunk, &mut x, &y, &mut env)?;
        env.values.insert("x".into(), x);
        env.values.insert("y".into(), y.clone());
        for (name, a) in &graph_inputs {
            env.values.insert(name.clone(), a.clone());
        }
        let out = engine.run(&env, &wanted)?;
        let scalar = |a: &ArrayD<f32>| a.iter().next().copied().unwrap_or(f32::NAN);
        tally.add(scalar(&out[0]), &out[1], &y);
        for (p, o) in parts.iter_mut().zip(&out[2..]) {
            *p += scalar(o) as f64 * chunk.len() as f64;
        }
    }
    let mut scores = tally.scores();
    scores.parts = objectives
        .into_iter()
        .zip(parts)
        .map(|(n, p)| (n, p / split.n.max(1) as f64))
        .collect();
    Ok(scores)
}

pub fn put_scores(m: &mut Map<String, Value>, prefix: &str, s: &Scores) {
    m.insert(format!("{prefix}_loss"), json!(s.loss));
    if let Some(a) = s.acc {
        m.insert(format!("{prefix}_acc"), json!(a));
    }
    if let Some(v) = s.mse {
        m.insert(format!("{prefix}_mse"), json!(v));
    }
    if let Some(v) = s.r2 {
        m.insert(format!("{prefix}_r2"), json!(v));
    }
    // The objectives' own names last: what the file calls `mse` is its `mse`.
    for (name, v) in &s.parts {
        m.insert(format!("{prefix}_{name}"), json!(v));
    }
}

pub struct RunLimits {
    pub epochs: usize,
    pub steps: Option<u64>,
    /// Tests only: before running this step (the number of steps done), stop making
    /// progress and wait to be killed or interrupted, so that a test can stop a run in the
    /// middle of an epoch without racing it. Set by the `DLC_TEST_STALL_AT_STEP` environment variable.
    pub stall_at_step: Option<u64>,
    /// Print nothing (an architecture search's children).
    pub quiet: bool,
    /// `--check-numerics`: stop at the first step whose results are not finite, naming the
    /// op that first gave a value that is not finite (`numerics`).
    pub check_numerics: bool,
}

/// The environment variable read into [`RunLimits::stall_at_step`].
pub const STALL_ENV: &str = "DLC_TEST_STALL_AT_STEP";

/// Train from `st` until `limits.epochs` epochs are done (or the step budget or early
/// stopping ends it). `on_epoch` sees the state at the end of every finished epoch (after
/// evaluation and early stopping, before the epoch's metrics line is written): the caller
/// saves its checkpoint there. Returns the state whose weights are the ones to save.
pub fn train(
    setup: &Setup,
    data: &Dataset,
    mut st: TrainState,
    limits: &RunLimits,
    sink: &mut MetricsSink,
    on_epoch: &mut dyn FnMut(&TrainState) -> Result<(), String>,
) -> Result<TrainState, String> {
    let cfg = &setup.cfg;
    let runners: Vec<StepRunner> = setup
        .steps
        .iter()
        .map(|s| StepRunner::new(&st, s))
        .collect();
    let n = data.train.n;
    if n == 0 {
        return Err(format!("data set {} has no training examples", data.name));
    }
    let batch_rows = if data.sparse.is_empty() { cfg.batch } else { n };
    let mut graph_inputs = sparse_inputs(data);
    let steps_per_epoch = n.div_ceil(batch_rows);
    let mut progress = Progress::new(limits.epochs, steps_per_epoch, limits.quiet);
    let mut budget_hit = false;
    while st.epoch < limits.epochs && !st.stopped && !budget_hit {
        let epoch = st.epoch + 1;
        let t0 = Instant::now();
        // A graph's nodes are one batch in their own order (the adjacency indexes them).
        let order = if data.sparse.is_empty() {
            epoch_order(n, st.seed, epoch)
        } else {
            (0..n).collect()
        };
        let mut tally = Tally::new(data.task);
        // Per objective, when there are several: the sum of its losses over examples.
        let mut parts = vec![0.0f64; setup.steps.len()];
        // Per reported value (`metrics = [...]`): (name, sum over examples).
        let mut reported: Vec<(String, f64)> = runners
            .iter()
            .flat_map(|r| r.reports.iter().map(|n| (n.clone(), 0.0)))
            .collect();
        // Sum, maximum and count of the steps' gradient norms.
        let mut norms = (0.0f64, 0.0f64, 0usize);
        progress.start_epoch(epoch);
        // A run stopped by --steps inside an epoch resumes at the next batch of it.
        let done_in_epoch = (st.step as usize).saturating_sub(st.epoch * steps_per_epoch);
        for chunk in order.chunks(batch_rows).skip(done_in_epoch) {
            if limits.stall_at_step == Some(st.step) {
                progress.finish();
                say!("stalled before step {} ({STALL_ENV})", st.step + 1);
                // Until killed, or interrupted (Ctrl-C).
                while !crate::interrupt::requested() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            // The step budget, or Ctrl-C: stop before this step, as at the end of a run.
            if limits.steps.is_some_and(|s| st.step >= s) || crate::interrupt::requested() {
                budget_hit = true;
                break;
            }
            let (mut x, y) = batch(&data.train, chunk, &data.x_shape, &data.y_shape);
            // Each objective's step in turn, on the same batch; the loss reported is their
            // sum, the global gradient norm that of all their gradients.
            let (mut loss, mut sq_norm, mut pred) = (0.0f32, 0.0f64, None);
            for (k, (s, r)) in setup.steps.iter().zip(&runners).enumerate() {
                // The batch and a graph's sparse inputs (made once per run) move into the
                // step and back.
                let mut inputs = vec![("x".to_string(), x), ("y".to_string(), y.clone())];
                inputs.append(&mut graph_inputs);
                let before = limits
                    .check_numerics
                    .then(|| (st.params.clone(), st.opt.clone()));
                let mut out = r.run_named(&s.engine, &mut st, &mut inputs)?;
                if let Some((params, opt)) = &before
                    && !crate::numerics::step_is_finite(out.loss, out.grad_norm, &st.params)
                {
                    progress.finish();
                    let when = format!("at step {} (epoch {epoch})", st.step + 1);
                    return Err(crate::numerics::locate(
                        setup,
                        k,
                        (params, opt),
                        &inputs,
                        (st.seed, st.step),
                        &when,
                    ));
                }
                graph_inputs = inputs.split_off(2);
                out.x = inputs.swap_remove(0).1;
                for (v, slot) in out
                    .reports
                    .iter()
                    .zip(reported.iter_mut().filter(|(n, _)| r.reports.contains(n)))
                {
                    slot.1 += *v as f64 * chunk.len() as f64;
                }
                x = out.x;
                loss += out.loss;
                parts[k] += out.loss as f64 * chunk.len() as f64;
                sq_norm += (out.grad_norm as f64).powi(2);
                if out.pred.is_some() {
                    pred = out.pred.map(|p| (p, k));
                }
            }
            st.step += 1;
            let (pred, from) = pred.ok_or("no training step computes the predictions")?;
            let engine = &setup.steps[from].engine;
            let grad_norm = sq_norm.sqrt() as f32;
            engine.recycle(x);
            norms.0 += grad_norm as f64;
            norms.1 = norms.1.max(grad_norm as f64);
            norms.2 += 1;
            if !loss.is_finite() {
                return Err(format!(
                    "epoch {epoch}, step {}: the loss is {loss}; try a smaller learning rate (--lr)",
                    st.step + 1
                ));
            }
            tally.add(loss, &pred, &y);
            engine.recycle(pred);
            progress.step(tally.scores().loss);
        }
        if tally.n == 0 {
            break;
        }
        let secs = t0.elapsed().as_secs_f64();
        let train = tally.scores();
        let mut m = Map::new();
        m.insert("epoch".into(), json!(epoch));
        m.insert("step".into(), json!(st.step));
        put_scores(&mut m, "train", &train);
        // Objectives under their names: several, or one named other than `loss`.
        if setup.steps.len() > 1 || setup.steps[0].name != "loss" {
            for (s, sum) in setup.steps.iter().zip(&parts) {
                m.insert(format!("train_{}", s.name), json!(sum / tally.n as f64));
            }
        }
        for (name, sum) in &reported {
            m.insert(format!("train_{name}"), json!(sum / tally.n as f64));
        }
        if norms.2 > 0 {
            m.insert("grad_norm_mean".into(), json!(norms.0 / norms.2 as f64));
            m.insert("grad_norm_max".into(), json!(norms.1));
        }
        if budget_hit {
            // The epoch is not finished: report what was trained, evaluate nothing.
            m.insert("partial".into(), json!(true));
            m.insert(
                "examples_per_s".into(),
                json!((tally.n as f64 / secs).round()),
            );
            progress.end_epoch(&m);
            sink.write(m)?;
            break;
        }
        st.epoch = epoch;
        if let Some(val) = &data.val {
            let v = evaluate(&setup.eval_engine, &st.params, val, data, st.seed)?;
            put_scores(&mut m, "val", &v);
            if let Some(es) = &cfg.early_stopping
                && early_stopping(&mut st, es, v.loss, epoch)
            {
                m.insert("early_stop".into(), json!(true));
            }
        }
        let test = evaluate(&setup.eval_engine, &st.params, &data.test, data, st.seed)?;
        put_scores(&mut m, "test", &test);
        m.insert(
            "examples_per_s".into(),
            json!((tally.n as f64 / secs).round()),
        );
        // The checkpoint first: a metrics line for epoch k means epoch k is on disk.
        on_epoch(&st)?;
        progress.end_epoch(&m);
        sink.write(m)?;
    }
    progress.finish();
    Ok(st)
}

/// Early stopping after an epoch with validation loss `loss`: a new best keeps the weights
/// and restores the patience, anything else spends one; true when training stops.
pub fn early_stopping(
    st: &mut TrainState,
    es: &dlc_compiler::lower::EarlyStopping,
    loss: f64,
    epoch: usize,
) -> bool {
    if loss < st.best_val_loss - es.min_delta {
        st.best_val_loss = loss;
        st.best = Some(st.params.clone());
        st.best_epoch = epoch;
        st.patience_left = es.patience;
    } else {
        st.patience_left = st.patience_left.saturating_sub(1);
        st.stopped = st.patience_left == 0;
    }
    st.stopped
}

/// After training: with early stopping, put the best weights back and report the test
/// metrics of exactly those weights.
pub fn restore_best(
    setup: &Setup,
    data: &Dataset,
    st: &mut TrainState,
    sink: &mut MetricsSink,
) -> Result<(), String> {
    let Some(best) = st.best.clone() else {
        return Ok(());
    };
    if st.best_epoch == st.epoch {
        return Ok(());
    }
    st.params = best;
    let test = evaluate(&setup.eval_engine, &st.params, &data.test, data, st.seed)?;
    let mut m = Map::new();
    m.insert("epoch".into(), json!(st.epoch));
    m.insert("step".into(), json!(st.step));
    m.insert("restored_epoch".into(), json!(st.best_epoch));
    m.insert("val_loss".into(), json!(st.best_val_loss));
    put_scores(&mut m, "test", &test);
    let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    say!(
        "restored the weights of epoch {}: {}",
        st.best_epoch,
        shown.join("  ")
    );
    sink.write(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn accuracy_per_example_and_per_position() {
        let task = Task::Classification { classes: 3 };
        // Two examples of one label each: the first right (class 1), the second wrong.
        let mut t = Tally::new(task);
        let pred = array(&[2, 3], vec![0.1, 0.8, 0.1, 0.9, 0.0, 0.1]);
        t.add(0.5, &pred, &array(&[2], vec![1.0, 2.0]));
        let s = t.scores();
        assert_eq!((s.loss, s.acc), (0.5, Some(0.5)));
        // Two examples of three positions: 4 of the 6 positions right; the loss is
        // weighted by examples across batches.
        let mut t = Tally::new(task);
        let pred = array(
            &[2, 3, 3],
            vec![
                1., 0., 0., 0., 1., 0., 0., 0., 1., // predicts 0 1 2
                0., 0., 1., 0., 0., 1., 0., 0., 1., // predicts 2 2 2
            ],
        );
        t.add(1.0, &pred, &array(&[2, 3], vec![0., 1., 0., 2., 2., 1.]));
        let one = array(&[1, 3, 3], vec![1., 0., 0., 1., 0., 0., 1., 0., 0.]);
        t.add(4.0, &one, &array(&[1, 3], vec![0., 0., 0.]));
        let s = t.scores();
        assert_eq!(s.acc, Some(7.0 / 9.0));
        assert_eq!(s.loss, 2.0);
    }

    #[test]
    fn batches_take_every_position_of_y() {
        let split = Split {
            x: (0..6).map(|v| v as f32).collect(),
            y: (10..16).map(|v| v as f32).collect(),
            n: 3,
        };
        let (x, y) = batch(&split, &[2, 0], &[2], &[2]);
        assert_eq!(x, array(&[2, 2], vec![4., 5., 0., 1.]));
        assert_eq!(y, array(&[2, 2], vec![14., 15., 10., 11.]));
        let labels = Split {
            x: vec![0.; 6],
            y: vec![7., 8., 9.],
            n: 3,
        };
        let (_, y) = batch(&labels, &[1], &[2], &[]);
        assert_eq!(y, array(&[1], vec![8.]));
    }
}
