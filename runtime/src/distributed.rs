//! Data-parallel training over MPI (`mpirun -np N dlc train FILE --distributed`, built with
//! the `mpi` feature). Every rank holds the same parameters and walks the same global
//! batches (the epoch order depends on the seed and the epoch alone); rank r takes rows
//! [len·r/N, len·(r+1)/N) of each. A step is split in two (`train::update_graph`): each rank
//! computes its rows' gradients, the gradients weighted by each rank's share of the rows
//! are summed by one all-reduce, and every rank applies the same update to the same
//! parameters. Training loss and accuracy, and the test evaluation (its rows split the same
//! way), are summed across ranks. Rank 0 alone prints, writes metrics and checkpoints.
//!
//! The all-reduce overlaps the backward pass as PyTorch's DistributedDataParallel does: the
//! gradients, last parameters first, fill buckets of `--bucket-mb`; the JIT hands each
//! gradient over as soon as its kernel has run (`Engine::run_observed`), and a full bucket
//! starts a non-blocking all-reduce that MPI progresses between the remaining kernels.
//! Random draws (dropout masks) are keyed by the global row, as in one process. Several
//! objectives, graph data and regression tasks are refused (`check`).

use crate::checkpoint::Tensors;
use crate::engine::{Engine, EngineKind};
use crate::metrics::{MetricsSink, Progress};
use crate::session::Setup;
use crate::trainer::{self, TrainState};
use dlc_compiler::interp::Observer;
use dlc_data::{Dataset, Split, Task};
use mpi::collective::SystemOperation;
use mpi::request::{LocalScope, Request};
use mpi::traits::*;
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, json};
use std::cell::RefCell;
use std::time::Instant;

/// The processes of an `mpirun`.
pub struct Group {
    _universe: mpi::environment::Universe,
    world: mpi::topology::SimpleCommunicator,
    pub rank: usize,
    pub size: usize,
    /// The least size of a bucket of gradients all-reduced together, in bytes.
    pub bucket_bytes: usize,
}

impl Group {
    /// Join the job. Only the calling thread calls MPI (kernels' worker threads do not).
    pub fn init(bucket_bytes: usize) -> Result<Group, String> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or("MPI is already initialised")?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Group {
            _universe: universe,
            world,
            rank,
            size,
            bucket_bytes,
        })
    }

    /// Element-wise sum over the ranks, in place.
    pub fn sum_f32(&self, v: &mut [f32]) {
        let mine = v.to_vec();
        self.world
            .all_reduce_into(&mine[..], v, SystemOperation::sum());
    }

    pub fn sum_f64(&self, v: &mut [f64]) {
        let mine = v.to_vec();
        self.world
            .all_reduce_into(&mine[..], v, SystemOperation::sum());
    }

    /// (minimum, maximum) of a value over the ranks.
    pub fn min_max(&self, v: f64) -> (f64, f64) {
        let (mut lo, mut hi) = (0.0, 0.0);
        self.world
            .all_reduce_into(&v, &mut lo, SystemOperation::min());
        self.world
            .all_reduce_into(&v, &mut hi, SystemOperation::max());
        (lo, hi)
    }

    /// End every rank of the job with `code` (an error on one rank must not leave the
    /// others waiting in a collective).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The rows rank `rank` of `size` takes of a batch of `len`: as even as possible.
pub fn share(len: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    len * rank / size..len * (rank + 1) / size
}

/// A split's rows for one rank.
fn part(split: &Split, rank: usize, size: usize) -> Split {
    let r = share(split.n, rank, size);
    let w = split.example_len();
    let yw = split.y.len().checked_div(split.n).unwrap_or(0);
    Split {
        x: split.x[r.start * w..r.end * w].to_vec(),
        y: split.y[r.start * yw..r.end * yw].to_vec(),
        n: r.len(),
    }
}

/// What the distributed loop refuses, with the reason.
pub fn check(setup: &Setup, data: &Dataset) -> Result<(), String> {
    let reason = if setup.steps.len() != 1 || !setup.cfg.reports.is_empty() {
        Some("a section with several objectives or reported metrics")
    } else if !data.sparse.is_empty() {
        Some("a graph data set (trained full-batch)")
    } else if matches!(data.task, Task::Regression) {
        Some("a regression task")
    } else {
        None
    };
    match reason {
        Some(r) => Err(format!("--distributed does not support {r} yet")),
        None => Ok(()),
    }
}

/// The two halves of the step: gradients and update.
struct Halves {
    grads: Engine,
    update: Engine,
    /// Parameters the step trains, with their sizes, in one fixed order.
    params: Vec<(String, usize)>,
    /// Their gradients' names, last parameter first: the order the backward pass computes
    /// them in, and so the order the gradients' run is asked for them.
    observed: Vec<String>,
    states: Vec<String>,
    /// Where each parameter's gradient goes in the all-reduce.
    buckets: Buckets,
    /// Kept from step to step.
    bufs: RefCell<Exchange>,
    /// Seconds spent so far in the gradients' run, waiting for the all-reduce after it,
    /// in the update, and between the first bucket's start and the end of the gradients'
    /// run (the time the backward pass can hide the exchange in).
    spent: std::cell::Cell<[f64; 4]>,
}

/// The buckets' send and receive buffers, and each parameter's reduced gradient.
struct Exchange {
    sends: Vec<Vec<f32>>,
    recvs: Vec<Vec<f32>>,
    grads: Vec<ArrayD<f32>>,
}

/// The gradients grouped for the all-reduce, as DDP groups them: parameters in reverse
/// order (the backward pass computes the last layer's gradients first), packed into
/// buckets of at least `cap` bytes, each all-reduced as soon as all of its gradients (and
/// every earlier bucket) are ready.
struct Buckets {
    /// Each parameter's length in elements, in `Halves::params` order.
    lens: Vec<usize>,
    /// (bucket, offset in it) of each parameter, in `Halves::params` order.
    place: Vec<(usize, usize)>,
    /// Each bucket's length in elements and number of parameters.
    sizes: Vec<(usize, usize)>,
}

impl Buckets {
    fn new(lens: Vec<usize>, cap: usize) -> Buckets {
        let mut place = vec![(0, 0); lens.len()];
        let mut sizes: Vec<(usize, usize)> = Vec::new();
        for (i, &len) in lens.iter().enumerate().rev() {
            let last = sizes.len().wrapping_sub(1);
            match sizes.last_mut() {
                Some((n, k)) if *n * 4 < cap => {
                    place[i] = (last, *n);
                    *n += len;
                    *k += 1;
                }
                _ => {
                    place[i] = (last.wrapping_add(1), 0);
                    sizes.push((len, 1));
                }
            }
        }
        Buckets { lens, place, sizes }
    }
}

fn halves(
    setup: &Setup,
    kind: EngineKind,
    threads: usize,
    no_opt: bool,
    bucket_bytes: usize,
) -> Result<Halves, String> {
    let step = &setup.steps[0];
    let tg = &step.train;
    let optimized = |g: &dlc_compiler::ir::Graph| {
        if no_opt {
            g.clone()
        } else {
            dlc_compiler::opt::optimize(g).graph
        }
    };
    let mut gg = tg.grad_graph.clone();
    gg.outputs
        .retain(|(n, _)| n == "loss" || n == "pred" || n.strip_prefix("grad:").is_some());
    let opt = setup.cfg.objectives[0].optimizer(&setup.cfg);
    let (ug, states) = dlc_compiler::train::update_graph(&tg.params, opt, setup.cfg.clip_norm);
    let params: Vec<(String, usize)> = tg
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.iter().product()))
        .collect();
    let buckets = Buckets::new(params.iter().map(|(_, n)| *n).collect(), bucket_bytes);
    let bufs = buckets.sizes.iter().map(|&(n, _)| vec![0f32; n]);
    let grads = tg
        .params
        .iter()
        .map(|p| ArrayD::zeros(IxDyn(&p.shape)))
        .collect();
    Ok(Halves {
        observed: params
            .iter()
            .rev()
            .map(|(p, _)| format!("grad:{p}"))
            .collect(),
        grads: Engine::new(kind, optimized(&gg.compact()), threads)?,
        update: Engine::new(kind, optimized(&ug), threads)?,
        params,
        states: states.into_iter().map(|s| s.name).collect(),
        bufs: RefCell::new(Exchange {
            sends: bufs.clone().collect(),
            recvs: bufs.collect(),
            grads,
        }),
        buckets,
        spent: Default::default(),
    })
}

/// The all-reduce of one step's gradients, bucket by bucket, while the backward pass
/// runs: `ready` copies a gradient (times this rank's share of the rows) into its bucket
/// and starts the bucket's non-blocking all-reduce once the bucket is full; `tick`
/// (between kernels) lets MPI progress the started ones. Buckets start in one fixed
/// order on every rank, as MPI requires of collectives.
struct Reducer<'a, 's> {
    world: &'a mpi::topology::SimpleCommunicator,
    scope: &'s LocalScope<'a>,
    plan: &'a Buckets,
    weight: f32,
    send: Vec<Option<&'a mut [f32]>>,
    recv: Vec<Option<&'a mut [f32]>>,
    /// Gradients still missing from each bucket.
    missing: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    running: Vec<Request<'a, [f32], &'s LocalScope<'a>>>,
    /// When the first bucket started.
    first: Option<Instant>,
}

impl<'a, 's> Reducer<'a, 's> {
    /// Start every full bucket whose turn it is.
    fn start(&mut self) {
        while self.next < self.missing.len() && self.missing[self.next] == 0 {
            let b = self.next;
            self.first.get_or_insert_with(Instant::now);
            let send: &'a [f32] = self.send[b].take().expect("started once");
            let recv = self.recv[b].take().expect("started once");
            self.running.push(self.world.immediate_all_reduce_into(
                self.scope,
                send,
                recv,
                SystemOperation::sum(),
            ));
            self.next += 1;
        }
    }

    /// Start what is left (a rank without rows sends zeros) and wait for every bucket.
    fn finish(mut self) {
        for b in self.next..self.missing.len() {
            if self.missing[b] > 0
                && let Some(s) = self.send[b].as_deref_mut()
            {
                s.fill(0.0);
            }
            self.missing[b] = 0;
        }
        self.start();
        for r in self.running.drain(..) {
            r.wait();
        }
    }

    /// After an error: the job is ending (the caller aborts it); leave the started
    /// all-reduces to MPI rather than wait for ranks that may never join them.
    fn abandon(mut self) {
        for r in self.running.drain(..) {
            // SAFETY: the request leaves its scope unfinished; its buffers are leaked by
            // the caller, so MPI never writes to freed memory.
            let _ = unsafe { r.into_raw() };
        }
    }
}

impl Observer<f32> for Reducer<'_, '_> {
    /// The gradients are asked for last parameter first: the k-th is parameter n − 1 − k's.
    fn ready(&mut self, k: usize, value: ndarray::ArrayViewD<f32>) {
        let p = self.plan.lens.len() - 1 - k;
        let (b, at) = self.plan.place[p];
        let len = self.plan.lens[p];
        if let Some(dst) = self.send[b].as_deref_mut() {
            let dst = &mut dst[at..at + len];
            match value.as_slice() {
                Some(src) => {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = v * self.weight;
                    }
                }
                None => {
                    for (d, v) in dst.iter_mut().zip(value.iter()) {
                        *d = v * self.weight;
                    }
                }
            }
        }
        self.missing[b] -= 1;
        self.start();
    }

    fn tick(&mut self) {
        let mut still = Vec::with_capacity(self.running.len());
        for r in self.running.drain(..) {
            if let Err(r) = r.test() {
                still.push(r);
            }
        }
        self.running = still;
    }
}

impl Halves {
    /// One training step on the global batch `chunk` (row indices of the training split):
    /// this rank's rows, the all-reduce of the row-weighted gradients (bucket by bucket,
    /// during the backward pass), the update. Returns this rank's (examples, loss sum,
    /// predictions judged, right) and the norm of the batch's gradient.
    fn step(
        &self,
        st: &mut TrainState,
        data: &Dataset,
        chunk: &[usize],
        group: &Group,
    ) -> Result<([f64; 4], f64), String> {
        let rows = share(chunk.len(), group.rank, group.size);
        let mine = &chunk[rows.clone()];
        let mut tally = [0f64; 4];
        // The parameters and the state move into the step's environment and back.
        let mut env = dlc_compiler::interp::Env::new(st.seed, st.step);
        // Random draws (dropout masks) keyed by the global row, as in one process.
        env.row_offset = rows.start as u64;
        env.values.extend(std::mem::take(&mut st.params));
        let mut bufs = self.bufs.borrow_mut();
        let Exchange {
            sends,
            recvs,
            grads,
        } = &mut *bufs;
        let result = mpi::request::scope(|scope| {
            let mut red = Reducer {
                world: &group.world,
                scope,
                plan: &self.buckets,
                weight: mine.len() as f32 / chunk.len() as f32,
                send: sends.iter_mut().map(|b| Some(&mut b[..])).collect(),
                recv: recvs.iter_mut().map(|b| Some(&mut b[..])).collect(),
                missing: self.buckets.sizes.iter().map(|&(_, k)| k).collect(),
                next: 0,
                running: Vec::new(),
                first: None,
            };
            if mine.is_empty() {
                red.finish();
                return Ok(());
            }
            let (x, y) = trainer::batch(&data.train, mine, &data.x_shape, &data.y_shape);
            env.values.insert("x".into(), x);
            env.values.insert("y".into(), y);
            let observed: Vec<&str> = self.observed.iter().map(String::as_str).collect();
            let t0 = Instant::now();
            let out = self
                .grads
                .run_observed(&env, &["loss", "pred"], &observed, &mut red);
            let t1 = Instant::now();
            let window = red.first.map_or(0.0, |f| (t1 - f).as_secs_f64());
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    red.abandon();
                    return Err(e);
                }
            };
            red.finish();
            let mut spent = self.spent.get();
            spent[0] += (t1 - t0).as_secs_f64();
            spent[1] += t1.elapsed().as_secs_f64();
            spent[3] += window;
            self.spent.set(spent);
            let loss = out[0].iter().next().copied().unwrap_or(f32::NAN);
            let y = &env.values["y"];
            let (j, r) = judge(&out[1], y, data.task);
            tally = [mine.len() as f64, loss as f64 * mine.len() as f64, j, r];
            for o in out {
                self.grads.recycle(o);
            }
            Ok(())
        });
        if let Err(e) = result {
            // MPI may still write into the buckets: they must outlive the process.
            std::mem::forget(std::mem::take(sends));
            std::mem::forget(std::mem::take(recvs));
            return Err(e);
        }
        for k in ["x", "y"] {
            if let Some(a) = env.values.remove(k) {
                self.grads.recycle(a);
            }
        }
        // The reduced gradients, each into its parameter's array.
        for ((p, len), (g, &(b, at))) in self
            .params
            .iter()
            .zip(grads.iter_mut().zip(&self.buckets.place))
        {
            let mut g = std::mem::replace(g, ArrayD::zeros(IxDyn(&[0])));
            g.as_slice_mut()
                .ok_or("a gradient buffer is not contiguous")?
                .copy_from_slice(&recvs[b][at..at + len]);
            env.values.insert(format!("grad:{p}"), g);
        }
        for s in &self.states {
            let v = st
                .opt
                .remove(s)
                .ok_or_else(|| format!("no optimizer state {s}"))?;
            env.values.insert(s.clone(), v);
        }
        env.values.insert(
            "step".into(),
            ArrayD::from_elem(IxDyn(&[]), (st.step + 1) as f32),
        );
        let mut names: Vec<String> = vec!["grad_sq_norm".into()];
        names.extend(self.params.iter().map(|(p, _)| format!("new:{p}")));
        names.extend(self.states.iter().map(|s| format!("new:{s}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // New parameters and states written over the old ones where the plan allows.
        let donate: Vec<(&str, &str)> = refs[1..]
            .iter()
            .zip(self.params.iter().map(|(p, _)| p).chain(&self.states))
            .map(|(o, l)| (*o, l.as_str()))
            .collect();
        let t0 = Instant::now();
        let out = self.update.run_donating(&mut env, &refs, &donate);
        let mut spent = self.spent.get();
        spent[2] += t0.elapsed().as_secs_f64();
        self.spent.set(spent);
        for ((p, _), g) in self.params.iter().zip(grads.iter_mut()) {
            if let Some(a) = env.values.remove(&format!("grad:{p}")) {
                *g = a;
            }
        }
        let mut out = out?.into_iter();
        // The norm of the whole batch's gradient (before clipping), the same on every rank.
        let grad_norm = out
            .next()
            .and_then(|a| a.iter().next().copied())
            .map_or(f64::NAN, |v| (v as f64).sqrt());
        for (p, _) in &self.params {
            st.params
                .insert(p.clone(), out.next().ok_or("too few outputs")?);
            env.values.remove(p);
        }
        for s in &self.states {
            st.opt
                .insert(s.clone(), out.next().ok_or("too few outputs")?);
            env.values.remove(s);
        }
        // Parameters the step does not train (none for one objective) stay as they were.
        for (k, v) in env.values {
            if !k.starts_with("grad:") && k != "step" {
                st.params.entry(k).or_insert(v);
            }
        }
        st.step += 1;
        Ok((tally, grad_norm))
    }
}

/// What `dlc bench --distributed` measures.
pub struct Timing {
    /// The median over the repeats of the mean step.
    pub ms_per_step: f64,
    /// Of the global batch.
    pub examples_per_s: f64,
    /// Per step, the mean over the steps and the ranks: the gradients' run (with the
    /// all-reduces started and progressed during it), the wait after it for the all-reduces
    /// to finish (the exchange the backward pass did not hide, and the ranks' skew), and
    /// the update.
    pub grads_ms: f64,
    pub wait_ms: f64,
    pub update_ms: f64,
    /// The time between the first bucket's start and the end of the gradients' run.
    pub overlap_ms: f64,
    pub buckets: usize,
}

/// `dlc bench --distributed`: the median time of `steps` training steps on global batches
/// of the section's size, over `repeats` repeats (after 10 warm-up steps), every rank in
/// step.
pub fn bench(
    setup: &Setup,
    data: &Dataset,
    (kind, threads, no_opt): (EngineKind, usize, bool),
    group: &Group,
    steps: usize,
    repeats: usize,
) -> Result<Timing, String> {
    check(setup, data)?;
    let h = halves(setup, kind, threads, no_opt, group.bucket_bytes)?;
    let b = setup.cfg.batch;
    let batches: Vec<Vec<usize>> = (0..4)
        .map(|i| (0..b).map(|r| (i * b + r) % data.train.n).collect())
        .collect();
    let mut st = TrainState::fresh(setup, 0);
    for k in 0..10 {
        h.step(&mut st, data, &batches[k % 4], group)?;
    }
    h.spent.set([0.0; 4]);
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        for k in 0..steps {
            h.step(&mut st, data, &batches[k % 4], group)?;
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3 / steps as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let ms = times[times.len() / 2];
    let mut spent = h.spent.get();
    group.sum_f64(&mut spent);
    let per = |secs: f64| secs * 1e3 / (steps * repeats * group.size) as f64;
    Ok(Timing {
        ms_per_step: ms,
        examples_per_s: b as f64 * 1e3 / ms,
        grads_ms: per(spent[0]),
        wait_ms: per(spent[1]),
        update_ms: per(spent[2]),
        overlap_ms: per(spent[3]),
        buckets: h.buckets.sizes.len(),
    })
}

/// The sum of every parameter, in a fixed order (equal on every rank when the parameters
/// are).
fn checksum(params: &Tensors) -> f64 {
    params
        .values()
        .flat_map(|a| a.iter())
        .map(|&v| v as f64)
        .sum()
}

/// Train from `st` for the section's epochs across the ranks of `group`; `on_epoch` and
/// `sink` (rank 0's) see every finished epoch.
#[allow(clippy::too_many_arguments)]
pub fn train(
    setup: &Setup,
    data: &Dataset,
    mut st: TrainState,
    epochs: usize,
    (kind, threads, no_opt): (EngineKind, usize, bool),
    group: &Group,
    sink: &mut MetricsSink,
    on_epoch: &mut dyn FnMut(&TrainState) -> Result<(), String>,
) -> Result<TrainState, String> {
    check(setup, data)?;
    let h = halves(setup, kind, threads, no_opt, group.bucket_bytes)?;
    let n = data.train.n;
    let batch = setup.cfg.batch;
    let steps_per_epoch = n.div_ceil(batch);
    let mut progress = Progress::new(epochs, steps_per_epoch, group.rank != 0);
    let test = part(&data.test, group.rank, group.size);
    let val = data.val.as_ref().map(|v| part(v, group.rank, group.size));
    // (loss, accuracy) of a split whose rows the ranks share (no accuracy for predictions
    // that are not answers).
    let scores = |st: &TrainState, rows: &Split| -> Result<(f64, Option<f64>), String> {
        let mut t = [0f64; 4];
        if rows.n > 0 {
            let s = trainer::evaluate(&setup.eval_engine, &st.params, rows, data, st.seed)?;
            t = [
                s.loss * rows.n as f64,
                s.acc.unwrap_or(0.0) * rows.n as f64,
                rows.n as f64,
                f64::from(u8::from(s.acc.is_some())),
            ];
        }
        group.sum_f64(&mut t);
        let acc = (t[3] > 0.0).then(|| t[1] / t[2].max(1.0));
        Ok((t[0] / t[2].max(1.0), acc))
    };
    while st.epoch < epochs && !st.stopped {
        let epoch = st.epoch + 1;
        let t0 = Instant::now();
        progress.start_epoch(epoch);
        let order = trainer::epoch_order(n, st.seed, epoch);
        // (examples, loss sum, predictions judged, right) of this rank's rows.
        let mut tally = [0f64; 4];
        // (sum, maximum, steps) of the gradient norms, as one process reports them.
        let mut norms = (0f64, 0f64, 0f64);
        for chunk in order.chunks(batch) {
            let (t, norm) = h.step(&mut st, data, chunk, group)?;
            norms = (norms.0 + norm, norms.1.max(norm), norms.2 + 1.0);
            for (a, b) in tally.iter_mut().zip(t) {
                *a += b;
            }
            progress.step(tally[1] / tally[0].max(1.0));
        }
        group.sum_f64(&mut tally);
        st.epoch = epoch;
        let secs = t0.elapsed().as_secs_f64();
        if !(tally[1] / tally[0]).is_finite() {
            return Err(format!(
                "epoch {epoch}: the loss is {}; try a smaller learning rate (--lr)",
                tally[1] / tally[0]
            ));
        }
        let mut m = Map::new();
        m.insert("epoch".into(), json!(epoch));
        m.insert("step".into(), json!(st.step));
        m.insert("train_loss".into(), json!(tally[1] / tally[0]));
        // (No accuracy for predictions that are not answers: an autoencoder's images.)
        if tally[2] > 0.0 {
            m.insert("train_acc".into(), json!(tally[3] / tally[2]));
        }
        if norms.2 > 0.0 {
            m.insert("grad_norm_mean".into(), json!(norms.0 / norms.2));
            m.insert("grad_norm_max".into(), json!(norms.1));
        }
        // Validation and early stopping as one process does them (`trainer::train`).
        if let Some(v) = &val {
            let (loss, acc) = scores(&st, v)?;
            m.insert("val_loss".into(), json!(loss));
            if let Some(a) = acc {
                m.insert("val_acc".into(), json!(a));
            }
            if let Some(es) = &setup.cfg.early_stopping
                && trainer::early_stopping(&mut st, es, loss, epoch)
            {
                m.insert("early_stop".into(), json!(true));
            }
        }
        // The test rows, split the same way.
        let (test_loss, test_acc) = scores(&st, &test)?;
        let (lo, hi) = group.min_max(checksum(&st.params));
        if lo != hi {
            return Err(format!(
                "epoch {epoch}: the ranks' parameters differ (checksums {lo} and {hi})"
            ));
        }
        m.insert("test_loss".into(), json!(test_loss));
        if let Some(a) = test_acc {
            m.insert("test_acc".into(), json!(a));
        }
        m.insert("ranks".into(), json!(group.size));
        m.insert("param_checksum".into(), json!(lo));
        m.insert("examples_per_s".into(), json!((tally[0] / secs).round()));
        if group.rank == 0 {
            on_epoch(&st)?;
            progress.end_epoch(&m);
            sink.write(m)?;
        }
    }
    progress.finish();
    Ok(st)
}

/// (predictions judged, right) of a batch's predictions against its labels.
fn judge(pred: &ArrayD<f32>, y: &ArrayD<f32>, task: Task) -> (f64, f64) {
    let classes = match task {
        Task::Classification { classes } => classes,
        _ => 1,
    };
    if pred.len() != y.len() * classes {
        return (0.0, 0.0);
    }
    let p = pred.as_standard_layout();
    let flat = p.as_slice().unwrap_or(&[]);
    let (mut judged, mut right) = (0.0, 0.0);
    for (i, &label) in y.iter().enumerate() {
        if label < 0.0 {
            continue;
        }
        judged += 1.0;
        let ok = match task {
            Task::Binary => (flat.get(i).copied().unwrap_or(0.0) > 0.5) == (label > 0.5),
            _ => {
                let row = &flat[i * classes..(i + 1) * classes];
                let best = (0..classes).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                best as f32 == label
            }
        };
        right += f64::from(u8::from(ok));
    }
    (judged, right)
}
