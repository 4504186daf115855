//! Random programs, differentially tested (as Csmith and YARPGen test C compilers): a
//! generator of well-typed random `.dl` programs (dense layers of random widths and
//! activations, element-wise functions, broadcasting against per-row reductions, sums of
//! earlier values, one or two objectives over different members with different
//! optimizers). Each program must compile, and one training step must give the same loss
//! and updated parameters and optimizer state on the unoptimized graph (reference
//! interpreter), on the optimized graph (reference interpreter) and on the optimized graph
//! compiled by the JIT, within 1e-4 relative.
//!
//! `DLC_RANDOM_PROGRAMS=N` runs N programs instead of the suite's 200 (a long run); a
//! failing program is printed whole, with its number, so that it can be kept as a test.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::Graph;
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::lower::{Mode, Program};
use dlc_compiler::ops::Op;
use dlc_compiler::opt::optimize;
use dlc_compiler::train::step_graphs;
use dlc_compiler::types::Dim;
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

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }

    /// A value in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

const FEATURES: usize = 4;

/// A random well-typed program on `toy` data (x: f32[B, 4], y: f32[B, 1]).
fn program(seed: u64) -> String {
    let mut r = Rng(seed);
    let layers = 1 + r.below(3);
    let mut members = String::new();
    let mut widths = vec![FEATURES];
    for i in 0..layers {
        let w = 1 + r.below(6);
        let act = r.pick(&["relu", "tanh", "sigmoid", "linear"]);
        let init = r.pick(&["glorot", "he", "lecun"]);
        let _ = writeln!(
            members,
            "  l{i} = Dense({}, {w}, activation: {act}, init: {init})",
            widths[i]
        );
        widths.push(w);
    }
    let _ = writeln!(members, "  head = Dense({}, 1)", widths[layers]);
    // The body: each layer's output, then a few element-wise steps on values of its width.
    let mut body = String::from("    let h0 = x\n");
    let mut values: Vec<(String, usize)> = vec![("h0".into(), FEATURES)];
    for i in 0..layers {
        let (prev, _) = values.last().cloned().expect("a value");
        let name = format!("a{i}");
        let _ = writeln!(body, "    let {name} = l{i}({prev})");
        values.push((name, widths[i + 1]));
        for j in 0..r.below(3) {
            let (v, w) = values.last().cloned().expect("a value");
            let same: Vec<String> = values
                .iter()
                .filter(|(_, k)| *k == w)
                .map(|(n, _)| n.clone())
                .collect();
            let other = same[r.below(same.len())].clone();
            let c = format!("{:.3}", r.unit());
            let e = match r.below(9) {
                0 => format!("tanh({v}) * {c}"),
                1 => format!("sigmoid({v}) + {other}"),
                2 => format!("{v} - mean({v}, 1, true)"),
                3 => format!("{v} * {other} * 0.5"),
                4 => format!("maximum({v}, {c})"),
                5 => format!("{v} + sum({other}, 1, true) * {c}"),
                6 => format!("abs({v}) + {c}"),
                7 => format!("clip({v}, -0.8, 0.8)"),
                _ => format!("select({v} > {c}, {v}, {other})"),
            };
            let name = format!("e{i}_{j}");
            let _ = writeln!(body, "    let {name} = {e}");
            values.push((name, w));
        }
    }
    let (last, _) = values.last().cloned().expect("a value");
    let _ = writeln!(body, "    head({last})");
    let mut src = format!(
        "model Net {{\n{members}  fn forward(x: f32[B, {FEATURES}]) -> f32[B, 1] {{\n{body}  }}\n}}\n"
    );
    let opt = |r: &mut Rng| {
        r.pick(&[
            "sgd(lr: 0.1)",
            "momentum(lr: 0.05, beta: 0.9)",
            "adam(lr: 0.01)",
            "rmsprop(lr: 0.01)",
            "adagrad(lr: 0.1)",
        ])
    };
    if layers > 1 && r.below(2) == 0 {
        // Two objectives: the head and the first layer fit the data; the other layers
        // keep their weights small.
        let (o1, o2) = (opt(&mut r), opt(&mut r));
        let rest: Vec<String> = (1..layers).map(|i| format!("l{i}")).collect();
        let penalty: Vec<String> = rest
            .iter()
            .map(|m| format!("mean({m}.w * {m}.w)"))
            .collect();
        let _ = write!(
            src,
            "train Net on toy {{\n  fit = mse(forward(x), y)\n  small = mse(forward(x), y) + 0.1 * ({})\n  minimize fit over head, l0 with {o1}\n  minimize small over {} with {o2}\n  batch = 3\n}}\n",
            penalty.join(" + "),
            rest.join(", ")
        );
    } else {
        let o = opt(&mut r);
        let clip = if r.below(3) == 0 {
            "  clip_norm = 0.5\n"
        } else {
            ""
        };
        let _ = write!(
            src,
            "train Net on toy {{\n  loss = mse(forward(x), y)\n  optimizer = {o}\n{clip}  batch = 3\n}}\n"
        );
    }
    src
}

/// Values for every leaf of a step: inputs and parameters in [-1, 1), optimizer state in
/// [0, 0.1), `step` 3.
fn env_for(g: &Graph, seed: u64, batch: usize) -> Env<f32> {
    let mut r = Rng(seed ^ 0x5EED);
    let mut env = Env::new(seed, 2);
    env.sizes.insert("B".into(), batch);
    for (name, n) in
        g.leaves(|op| matches!(op, Op::Input { .. } | Op::Param { .. } | Op::State { .. }))
    {
        let shape: Vec<usize> = g
            .ty(n)
            .shape
            .iter()
            .map(|d| if let Dim::Known(v) = d { *v } else { batch })
            .collect();
        let len: usize = shape.iter().product();
        let state = matches!(g.node(n).op, Op::State { .. });
        let v: Vec<f32> = (0..len)
            .map(|_| {
                if name == "step" {
                    3.0
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
    let src = program(k);
    let fail = |what: String| format!("program {k}: {what}\n{src}");
    let prog = Program::parse("random.dl", src.as_bytes())
        .map_err(|(source, d)| fail(d.iter().map(|d| source.render(d)).collect()))?;
    let (lowered, cfg) = prog
        .lower_training(&dlc_tests::toy_signature(FEATURES), Mode::Train)
        .map_err(|d| fail(d.iter().map(|d| prog.source.render(d)).collect()))?;
    let steps = step_graphs(&lowered, &cfg).map_err(|e| fail(e.to_string()))?;
    let mut compared = 0;
    for (o, tg) in &steps {
        let plain = &tg.graph;
        let opt = optimize(plain).graph;
        let env = env_for(plain, k, 3);
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
        .unwrap_or(200);
    let mut compared = 0;
    let mut two_objectives = 0;
    for k in 0..n {
        compared += check(k).unwrap_or_else(|e| panic!("{e}"));
        two_objectives += usize::from(program(k).contains("minimize"));
    }
    // The generator makes both kinds of section, and every step has outputs to compare.
    assert!(
        two_objectives > 0 && two_objectives < n as usize,
        "{two_objectives} of {n}"
    );
    assert!(compared >= 2 * n as usize, "{compared} values compared");
}
