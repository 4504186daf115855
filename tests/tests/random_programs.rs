//! Random programs, differentially tested (as Csmith and YARPGen test C compilers): a
//! generator of well-typed random `.dl` programs of three kinds: dense layers of random
//! widths and activations on toy regression data; convolutions (kernel sizes, strides,
//! padding) and max or average pooling on the digits' images, classified; an embedding and
//! recurrent layers (the prelude's scans, or a step function of the program's own that
//! captures its parameters, sometimes in reverse) on a small text, classified at every
//! step. Between layers: element-wise functions, broadcasting against reductions over the
//! last axis, softmax, products, quotients and sums of earlier values, `maximum`,
//! `minimum`, `clip`, `select`, `stop_gradient`, dropout, concatenation. The section has
//! one objective (any of six optimizers, sometimes global-norm clipping) or
//! two over different members with different optimizers. Each program must compile, and
//! one training step must give the same loss and updated parameters and optimizer state
//! on the unoptimized graph (reference interpreter), on the optimized graph (reference
//! interpreter) and on the optimized graph compiled by the JIT, within 1e-4 relative.
//!
//! `DLC_RANDOM_PROGRAMS=N` runs N programs instead of the suite's 300 (a long run); a
//! failing program is printed whole, with its number, so that it can be kept as a test.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::Graph;
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::lower::{DataSig, Mode, Program};
use dlc_compiler::ops::Op;
use dlc_compiler::opt::optimize;
use dlc_compiler::train::step_graphs;
use dlc_compiler::types::{DType, Dim};
use ndarray::{ArrayD, IxDyn};
use std::fmt::Write as _;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }

    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }

    /// A value in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

const FEATURES: usize = 4;
/// The digits' images (8×8) and classes.
const SIDE: usize = 8;
const CLASSES: usize = 10;
const BATCH: usize = 3;

/// The three kinds of network the generator builds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Dense layers on `toy` data (x f32[B, 4], y f32[B, 1]), mean squared error.
    Dense,
    /// Convolutions and pooling on the digits (x f32[B, 8, 8], y i32[B] of 10 classes),
    /// softmax cross-entropy.
    Conv,
    /// An embedding, recurrent layers (scans) and a dense layer at every step on a small
    /// text (x, y i32[B, T] over a vocabulary), softmax cross-entropy at every step.
    Recurrent { vocab: usize, seq: usize },
}

/// A program being written: its members, its forward pass, and the values of the pass
/// so far with their shapes (all but the batch).
struct Net {
    members: String,
    fns: String,
    body: String,
    values: Vec<(String, Vec<usize>)>,
    /// Members that fit the data under a second objective; the rest, with the parameter
    /// the second objective keeps small.
    fit: Vec<String>,
    rest: Vec<(String, String)>,
}

impl Net {
    fn member(&mut self, name: &str, def: &str, penalized: Option<&str>) {
        let _ = writeln!(self.members, "  {name} = {def}");
        match penalized {
            Some(p) => self.rest.push((name.to_string(), format!("{name}.{p}"))),
            None => self.fit.push(name.to_string()),
        }
    }

    fn add(&mut self, name: String, e: String, shape: Vec<usize>) -> String {
        let _ = writeln!(self.body, "    let {name} = {e}");
        self.values.push((name.clone(), shape));
        name
    }

    fn last(&self) -> (String, Vec<usize>) {
        self.values.last().cloned().expect("a value")
    }

    /// Up to two steps on the last value: element-wise functions, broadcasting against its
    /// mean, sum or maximum over the last axis, softmax, products, quotients and sums with
    /// earlier values of the same shape, `maximum`, `minimum`, `clip`, `select`,
    /// `stop_gradient`, dropout, or its concatenation with an earlier value.
    fn elementwise(&mut self, r: &mut Rng, tag: &str) {
        for j in 0..r.below(3) {
            let (v, shape) = self.last();
            let same: Vec<String> = self
                .values
                .iter()
                .filter(|(_, s)| *s == shape)
                .map(|(n, _)| n.clone())
                .collect();
            let other = same[r.below(same.len())].clone();
            let c = format!("{:.3}", r.unit());
            let mut out = shape.clone();
            let e = match r.below(19) {
                0 => format!("tanh({v}) * {c}"),
                1 => format!("sigmoid({v}) + {other}"),
                2 => format!("{v} - mean({v}, -1, true)"),
                3 => format!("{v} * {other} * 0.5"),
                4 => format!("maximum({v}, {c})"),
                5 => format!("{v} + sum({other}, -1, true) * {c}"),
                6 => format!("abs({v}) + {c}"),
                7 => format!("clip({v}, -0.8, 0.8)"),
                8 => format!("select({v} > {c}, {v}, {other})"),
                9 => format!("softmax({v}, axis: -1) + {other}"),
                10 => format!("log_softmax({v}, axis: -1) * {c}"),
                11 => format!("exp(clip({v}, -2, 2)) * 0.5"),
                12 => format!("log(abs({v}) + 1) - sqrt({other} * {other} + 0.1)"),
                13 => format!("{v} - max({v}, -1, true)"),
                14 => format!("stop_gradient({v}) * {other} + {v} ** 2"),
                15 => format!("dropout({v}, 0.3)"),
                16 => format!("minimum({v}, {other}) + sign({v}) * {c}"),
                17 => format!("{v} / (abs({other}) + 1)"),
                _ => {
                    *out.last_mut().expect("a feature axis") *= 2;
                    format!("concat([{v}, {other}], axis: -1)")
                }
            };
            self.add(format!("e{tag}_{j}"), e, out);
        }
    }
}

fn activation(r: &mut Rng) -> &'static str {
    r.pick(&["relu", "tanh", "sigmoid", "linear"])
}

fn init(r: &mut Rng) -> &'static str {
    r.pick(&["glorot", "he", "lecun"])
}

/// 1–3 dense layers of random widths, activations and initialisers, on x [B, 4].
fn dense(r: &mut Rng, net: &mut Net) {
    let layers = 1 + r.below(3);
    for i in 0..layers {
        let (prev, shape) = net.last();
        let w = 1 + r.below(6);
        let (act, ini) = (activation(r), init(r));
        let def = format!("Dense({}, {w}, activation: {act}, init: {ini})", shape[0]);
        net.member(&format!("l{i}"), &def, (i > 0).then_some("w"));
        net.add(format!("a{i}"), format!("l{i}({prev})"), vec![w]);
        net.elementwise(r, &i.to_string());
    }
    let (last, shape) = net.last();
    net.member("head", &format!("Dense({}, 1)", shape[0]), None);
    let _ = writeln!(net.body, "    head({last})");
}

/// 1–2 convolutions (kernels 1–3, stride 1–2, "valid" or "same" padding) on the digits
/// as NHWC, each perhaps followed by max or average pooling, then a dense layer on the
/// flattened maps.
fn conv(r: &mut Rng, net: &mut Net) {
    net.add(
        "img".into(),
        format!("reshape(x, [-1, {SIDE}, {SIDE}, 1])"),
        vec![SIDE, SIDE, 1],
    );
    for i in 0..1 + r.below(2) {
        let (prev, shape) = net.last();
        let (n, c) = (shape[0], shape[2]);
        let f = 1 + r.below(4);
        let k = r.range(1, 3.min(n));
        let s = r.range(1, 2);
        let same = r.coin();
        let m = if same { n.div_ceil(s) } else { (n - k) / s + 1 };
        let (act, ini) = (activation(r), init(r));
        let padding = if same { "same" } else { "valid" };
        let def = format!(
            "Conv2D({c}, {f}, {k}, stride: {s}, padding: \"{padding}\", activation: {act}, init: {ini})"
        );
        net.member(&format!("c{i}"), &def, (i > 0).then_some("w"));
        net.add(format!("a{i}"), format!("c{i}({prev})"), vec![m, m, f]);
        net.elementwise(r, &i.to_string());
        if m >= 2 && r.coin() {
            let (v, pooled) = net.last();
            let (p, st) = (r.range(2, 3.min(m)), r.range(1, 2));
            let pool = r.pick(&["maxpool2d", "avgpool2d"]);
            let q = (m - p) / st + 1;
            net.add(
                format!("p{i}"),
                format!("{pool}({v}, {p}, stride: {st})"),
                vec![q, q, pooled[2]],
            );
        }
    }
    let (last, shape) = net.last();
    let flat: usize = shape.iter().product();
    net.member("head", &format!("Dense({flat}, {CLASSES})"), None);
    let _ = writeln!(net.body, "    head(flatten({last}))");
}

/// An embedding, then 1–2 recurrent layers: the prelude's `Rnn`, `Lstm` or `Gru`, or a
/// step function of the model's own (capturing its parameters, sometimes scanning in
/// reverse, its final carry broadcast back over the steps); then a dense layer at every
/// step.
fn recurrent(r: &mut Rng, net: &mut Net, vocab: usize, seq: usize) {
    let e = 1 + r.below(4);
    net.member("emb", &format!("Embedding({vocab}, {e})"), None);
    net.add("h0".into(), "emb(x)".into(), vec![seq, e]);
    for i in 0..1 + r.below(2) {
        let (prev, shape) = net.last();
        let (t, inputs) = (shape[0], shape[1]);
        let h = 1 + r.below(4);
        let name = format!("r{i}");
        match r.below(4) {
            0 => net.member(
                &name,
                &format!("Rnn({inputs}, {h}, activation: {})", activation(r)),
                Some("cell.wx"),
            ),
            1 => net.member(&name, &format!("Lstm({inputs}, {h})"), Some("cell.wh")),
            2 => net.member(&name, &format!("Gru({inputs}, {h})"), Some("cell.wx")),
            _ => {
                let _ = writeln!(
                    net.members,
                    "  {name}x = param([{inputs}, {h}], init: {})",
                    init(r)
                );
                let _ = writeln!(
                    net.members,
                    "  {name}h = param([{h}, {h}], init: {})",
                    init(r)
                );
                net.fit.push(format!("{name}x"));
                net.rest.push((format!("{name}h"), format!("{name}h")));
                let keep = format!("{:.3}", 0.5 + 0.5 * r.unit().abs());
                let out = match r.below(3) {
                    0 => "c2".to_string(),
                    1 => format!("c2 * {:.3}", r.unit()),
                    _ => "sigmoid(c2) + c".to_string(),
                };
                let _ = writeln!(
                    net.fns,
                    "  fn step{i}(c, xt) {{\n    let c2 = {}(xt @ {name}x + c @ {name}h) * {keep} + c * (1 - {keep})\n    (c2, {out})\n  }}",
                    activation(r),
                );
                let reverse = if r.coin() { ", reverse: true" } else { "" };
                let _ = writeln!(
                    net.body,
                    "    let (s{i}, last{i}) = scan(step{i}, {prev}, init: zeros[B, {h}]{reverse})"
                );
                let e = if r.coin() {
                    format!("s{i} + reshape(last{i}, [-1, 1, {h}])")
                } else {
                    format!("s{i}")
                };
                net.add(format!("a{i}"), e, vec![t, h]);
                net.elementwise(r, &i.to_string());
                continue;
            }
        }
        net.add(format!("a{i}"), format!("{name}({prev})"), vec![t, h]);
        net.elementwise(r, &i.to_string());
    }
    let (last, shape) = net.last();
    net.member("head", &format!("Dense({}, {vocab})", shape[1]), None);
    let _ = writeln!(net.body, "    head({last})");
}

fn optimizer(r: &mut Rng) -> &'static str {
    r.pick(&[
        "sgd(lr: 0.1)",
        "momentum(lr: 0.05, beta: 0.9)",
        "adam(lr: 0.01)",
        "rmsprop(lr: 0.01)",
        "adagrad(lr: 0.1)",
        "adadelta(lr: 1.0)",
    ])
}

/// A random well-typed program of a random kind.
fn program(seed: u64) -> (String, Kind) {
    let mut r = Rng(seed);
    let kind = match r.below(3) {
        0 => Kind::Dense,
        1 => Kind::Conv,
        _ => Kind::Recurrent {
            vocab: r.range(2, 7),
            seq: r.range(1, 4),
        },
    };
    let mut net = Net {
        members: String::new(),
        fns: String::new(),
        body: String::new(),
        values: Vec::new(),
        fit: Vec::new(),
        rest: Vec::new(),
    };
    let (signature, loss, data) = match kind {
        Kind::Dense => {
            net.values.push(("x".into(), vec![FEATURES]));
            dense(&mut r, &mut net);
            (
                format!("x: f32[B, {FEATURES}]) -> f32[B, 1]"),
                "mse(forward(x), y)",
                "toy".to_string(),
            )
        }
        Kind::Conv => {
            conv(&mut r, &mut net);
            (
                format!("x: f32[B, {SIDE}, {SIDE}]) -> f32[B, {CLASSES}]"),
                "softmax_cross_entropy(forward(x), y)",
                "digits".to_string(),
            )
        }
        Kind::Recurrent { vocab, seq } => {
            recurrent(&mut r, &mut net, vocab, seq);
            (
                format!("x: i32[B, {seq}]) -> f32[B, {seq}, {vocab}]"),
                "softmax_cross_entropy(forward(x), y)",
                format!("songs(seq: {seq})"),
            )
        }
    };
    let Net {
        members,
        fns,
        body,
        fit,
        rest,
        ..
    } = net;
    let mut src =
        format!("model Net {{\n{members}{fns}  fn forward({signature} {{\n{body}  }}\n}}\n");
    if !rest.is_empty() && r.coin() {
        // Two objectives: some members fit the data; the others fit it while keeping one
        // of their parameters small, with another optimizer.
        let (o1, o2) = (optimizer(&mut r), optimizer(&mut r));
        let penalty: Vec<String> = rest
            .iter()
            .map(|(_, p)| format!("mean({p} * {p})"))
            .collect();
        let rest: Vec<&str> = rest.iter().map(|(m, _)| m.as_str()).collect();
        let _ = write!(
            src,
            "train Net on {data} {{\n  fit = {loss}\n  small = {loss} + 0.1 * ({})\n  minimize fit over {} with {o1}\n  minimize small over {} with {o2}\n  batch = {BATCH}\n}}\n",
            penalty.join(" + "),
            fit.join(", "),
            rest.join(", ")
        );
    } else {
        let o = optimizer(&mut r);
        let clip = if r.below(3) == 0 {
            "  clip_norm = 0.5\n"
        } else {
            ""
        };
        let _ = write!(
            src,
            "train Net on {data} {{\n  loss = {loss}\n  optimizer = {o}\n{clip}  batch = {BATCH}\n}}\n"
        );
    }
    (src, kind)
}

/// What a program of this kind trains on.
fn signature(kind: Kind) -> DataSig {
    match kind {
        Kind::Dense => dlc_tests::toy_signature(FEATURES),
        Kind::Conv => dlc_runtime::datasig::by_name("digits").expect("digits"),
        Kind::Recurrent { vocab, seq } => dlc_runtime::datasig::text("songs", Some(vocab), seq),
    }
}

/// Values for every leaf of a step: real inputs and parameters in [-1, 1), integer inputs
/// (ids, labels) below their bound, optimizer state in [0, 0.1), `step` 3.
fn env_for(g: &Graph, seed: u64, kind: Kind) -> Env<f32> {
    let mut r = Rng(seed ^ 0x5EED);
    let mut env = Env::new(seed, 2);
    env.sizes.insert("B".into(), BATCH);
    let bound = match kind {
        Kind::Recurrent { vocab, .. } => vocab,
        _ => CLASSES,
    };
    for (name, n) in
        g.leaves(|op| matches!(op, Op::Input { .. } | Op::Param { .. } | Op::State { .. }))
    {
        let ty = g.ty(n);
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| if let Dim::Known(v) = d { *v } else { BATCH })
            .collect();
        let len: usize = shape.iter().product();
        let state = matches!(g.node(n).op, Op::State { .. });
        let v: Vec<f32> = (0..len)
            .map(|_| {
                if name == "step" {
                    3.0
                } else if ty.dtype == DType::I32 {
                    r.below(bound) as f32
                } else if state {
                    (r.unit().abs() * 0.1) as f32
                } else {
                    r.unit() as f32
                }
            })
            .collect();
        env.values.insert(
            name,
            ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape"),
        );
    }
    env
}

/// Compile program `k` and compare its training steps on the three engines; the
/// program's text with the first difference.
fn check(k: u64) -> Result<usize, String> {
    let (src, kind) = program(k);
    let fail = |what: String| format!("program {k}: {what}\n{src}");
    let prog = Program::parse("random.dl", src.as_bytes())
        .map_err(|(source, d)| fail(d.iter().map(|d| source.render(d)).collect()))?;
    let (lowered, cfg) = prog
        .lower_training(&signature(kind), Mode::Train)
        .map_err(|d| fail(d.iter().map(|d| prog.source.render(d)).collect()))?;
    let steps = step_graphs(&lowered, &cfg).map_err(|e| fail(e.to_string()))?;
    let mut compared = 0;
    for (o, tg) in &steps {
        let plain = &tg.graph;
        let opt = optimize(plain).graph;
        let env = env_for(plain, k, kind);
        let names: Vec<&str> = plain
            .outputs
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n == o.name || n.starts_with("new:"))
            .collect();
        let want = run(plain, &env, &names).map_err(|e| fail(format!("unoptimized: {e}")))?;
        let interp = run(&opt, &env, &names).map_err(|e| fail(format!("optimized: {e}")))?;
        let jit = JitGraph::new(opt, 1)
            .and_then(|mut j| j.run(&env, &names))
            .map_err(|e| fail(format!("JIT: {e}")))?;
        for (engine, got) in [("optimized graph", &interp), ("JIT", &jit)] {
            for ((name, w), g) in names.iter().zip(&want).zip(got) {
                if w.shape() != g.shape() {
                    return Err(fail(format!(
                        "{engine}: {name} has shape {:?}, not {:?}",
                        g.shape(),
                        w.shape()
                    )));
                }
                for (a, b) in w.iter().zip(g.iter()) {
                    if !a.is_finite() || (a - b).abs() > 1e-4 * a.abs().max(1.0) {
                        return Err(fail(format!(
                            "objective {}: {name} on the {engine}: {b}, unoptimized {a}",
                            o.name
                        )));
                    }
                }
            }
        }
        compared += names.len();
    }
    Ok(compared)
}

#[test]
fn random_programs_train_the_same_on_every_engine() {
    let n: u64 = std::env::var("DLC_RANDOM_PROGRAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut compared = 0;
    let (mut two_objectives, mut dense, mut conv, mut recurrent, mut scans) = (0, 0, 0, 0, 0);
    for k in 0..n {
        compared += check(k).unwrap_or_else(|e| panic!("{e}"));
        let (src, kind) = program(k);
        two_objectives += usize::from(src.contains("minimize"));
        scans += usize::from(src.contains("scan("));
        match kind {
            Kind::Dense => dense += 1,
            Kind::Conv => conv += 1,
            Kind::Recurrent { .. } => recurrent += 1,
        }
    }
    // The generator makes every kind of network and both kinds of section, and every step
    // has outputs to compare.
    let n = n as usize;
    assert!(
        two_objectives > 0 && two_objectives < n,
        "{two_objectives} of {n} with two objectives"
    );
    assert!(
        dense > 0 && conv > 0 && recurrent > 0 && scans > 0,
        "{dense} dense, {conv} convolutional, {recurrent} recurrent ({scans} with their own step) of {n}"
    );
    assert!(compared >= 2 * n, "{compared} values compared");
}
