//! Scans: backpropagation through time (the reverse scan) against central finite
//! differences in f64, over tuple carries, captured parameters, `reverse: true`, T = 1,
//! a scan inside a scan and dropout inside a cell; the JIT against the reference
//! interpreter; and the training graph's size, which must not depend on T.

use dlc_compiler::autodiff;
use dlc_compiler::interp::{self, Env};
use dlc_compiler::ir::{Graph, NodeId};
use dlc_compiler::lower::{DataSig, Lowered, Mode, Program};
use dlc_compiler::ops::Op;
use dlc_compiler::types::{Dim, Type};
use ndarray::{ArrayD, IxDyn};

const B: usize = 2;

/// Lower `src` (a model and a training section on the data set `seq`) for inputs x of
/// `x_shape` (B first) and targets y of `y_shape`.
fn lower(src: &str, x_shape: &[usize], y_shape: &[usize]) -> Lowered {
    let prog = Program::parse("scan_test.dl", src.as_bytes()).unwrap_or_else(|(s, d)| {
        panic!(
            "parse: {:?}",
            d.iter().map(|d| s.render(d)).collect::<Vec<_>>()
        )
    });
    let dims = |s: &[usize]| {
        let mut v = vec![Dim::Sym("B".into())];
        v.extend(s.iter().map(|&d| Dim::Known(d)));
        v
    };
    let sig = DataSig {
        name: "seq".into(),
        dims: vec![],
        x: Type::f32(dims(x_shape)),
        y: Type::f32(dims(y_shape)),
        experience: Vec::new(),
        sparse: Vec::new(),
    };
    let (l, _) = prog.lower_training(&sig, Mode::Train).unwrap_or_else(|d| {
        panic!(
            "lower: {:?}",
            d.iter().map(|d| prog.source.render(d)).collect::<Vec<_>>()
        )
    });
    l
}

fn values(shape: &[usize], salt: usize) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|j| 0.5 * ((j * 7 + salt * 13) as f64 * 0.37 + 0.1).sin())
            .collect(),
    )
    .expect("shape")
}

fn env_for(l: &Lowered, x_shape: &[usize], y_shape: &[usize]) -> Env<f64> {
    let mut env: Env<f64> = Env::new(3, 5);
    for (i, p) in l.params.iter().enumerate() {
        env.values.insert(p.name.clone(), values(&p.shape, i + 1));
    }
    let full = |s: &[usize]| [&[B][..], s].concat();
    env.values.insert("x".into(), values(&full(x_shape), 101));
    env.values.insert("y".into(), values(&full(y_shape), 202));
    env
}

fn params(g: &Graph) -> Vec<NodeId> {
    g.leaves(|op| matches!(op, Op::Param { .. }))
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// Every parameter's gradient (every element) against central differences, and the
/// optimized graph's gradients on the JIT (f32) against the same differences.
fn check(src: &str, x_shape: &[usize], y_shape: &[usize]) -> Graph {
    let l = lower(src, x_shape, y_shape);
    let (gg, _) = autodiff::grad(&l.graph, "loss", &params(&l.graph)).expect("grad");
    gg.verify().expect("gradient graph verifies");
    let env = env_for(&l, x_shape, y_shape);
    let loss = |env: &Env<f64>| interp::run(&l.graph, env, &["loss"]).expect("runs")[0].sum();
    let names: Vec<String> = l
        .params
        .iter()
        .map(|p| format!("grad:{}", p.name))
        .collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let grads = interp::run(&gg, &env, &refs).expect("gradient graph runs");
    let mut env32: Env<f32> = Env::new(env.seed, env.step);
    for (k, v) in &env.values {
        env32.values.insert(k.clone(), v.mapv(|x| x as f32));
    }
    let optimized = dlc_compiler::opt::optimize(&gg).graph;
    let jit = dlc_compiler::jit::exec::JitGraph::new(optimized, 2)
        .expect("jit")
        .run(&env32, &refs)
        .expect("jit runs");
    for ((p, grad), jit_grad) in l.params.iter().zip(&grads).zip(&jit) {
        for j in 0..grad.len() {
            let h = 1e-6;
            let mut e2 = Env::new(env.seed, env.step);
            e2.values = env.values.clone();
            let slot = |e: &mut Env<f64>| -> *mut f64 {
                &mut e
                    .values
                    .get_mut(&p.name)
                    .expect("p")
                    .as_slice_mut()
                    .expect("std")[j]
            };
            let x = env.values[&p.name].as_slice().expect("std")[j];
            // SAFETY: the pointer is into e2's own array, used before e2 changes.
            unsafe { *slot(&mut e2) = x + h };
            let up = loss(&e2);
            unsafe { *slot(&mut e2) = x - h };
            let down = loss(&e2);
            let num = (up - down) / (2.0 * h);
            let ana = grad.as_slice().expect("std")[j];
            assert!(
                (ana - num).abs() <= 1e-7 + 1e-5 * num.abs(),
                "{} [{j}]: backprop {ana} vs finite differences {num}",
                p.name
            );
            let fast = jit_grad.as_slice().expect("std")[j] as f64;
            assert!(
                (fast - num).abs() <= 2e-5 + 2e-3 * num.abs(),
                "{} [{j}]: jit {fast} vs finite differences {num}",
                p.name
            );
        }
    }
    gg
}

fn scan_nodes(g: &Graph) -> (usize, usize) {
    let text = dlc_compiler::print::print_graph(g);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('%') && l.contains(" = scan["))
        .collect();
    let rev = lines.iter().filter(|l| l.contains("reverse=true")).count();
    (lines.len(), rev)
}

#[test]
fn lstm_cell_tuple_carry_and_captured_parameters() {
    let src = r#"
model M(hidden: 3) {
  cell = LstmCell(2, hidden)
  fn forward(x: f32[B, 4, 2]) {
    let (hs, last) = scan(cell, x, init: (zeros[B, hidden], zeros[B, hidden]))
    let (h, c) = last
    sum(hs, axis: 1) * 0.5 + h * c
  }
}
train M on seq {
  loss = mean((forward(x) - y) ** 2)
  optimizer = sgd(lr: 0.1)
}
"#;
    let gg = check(src, &[4, 2], &[3]);
    let (scans, rev) = scan_nodes(&gg);
    assert!(scans >= 2 && rev >= 1, "{scans} scans, {rev} reverse");
}

#[test]
fn reverse_scan_and_a_single_step() {
    for t in [1, 3] {
        let src = format!(
            r#"
model M(hidden: 3) {{
  cell = RnnCell(2, hidden)
  fn forward(x: f32[B, {t}, 2]) {{
    let (hs, last) = scan(cell, x, init: zeros[B, hidden], reverse: true)
    hs[:, 0, :] + last * last
  }}
}}
train M on seq {{
  loss = mean((forward(x) - y) ** 2)
  optimizer = sgd(lr: 0.1)
}}
"#
        );
        check(&src, &[t, 2], &[3]);
    }
}

#[test]
fn gru_cell() {
    let src = r#"
model M(hidden: 3) {
  layer = Gru(2, hidden)
  fn forward(x: f32[B, 3, 2]) { mean(layer(x), axis: 1) }
}
train M on seq {
  loss = mean((forward(x) - y) ** 2)
  optimizer = sgd(lr: 0.1)
}
"#;
    check(src, &[3, 2], &[3]);
}

#[test]
fn scan_inside_a_scan() {
    // The outer step runs an RNN over the inner axis of its slice [B, 3, 2].
    let src = r#"
model M(hidden: 2) {
  inner = RnnCell(2, hidden)
  w = param([hidden, hidden], init: glorot)
  fn outer(h, xt) {
    let (hs, last) = scan(inner, xt, init: h)
    let h2 = tanh(last @ w + h)
    let out = (h2, sum(hs, axis: 1))
    out
  }
  fn forward(x: f32[B, 2, 3, 2]) {
    let (ys, last) = scan(outer, x, init: zeros[B, hidden])
    sum(ys, axis: 1) + last
  }
}
train M on seq {
  loss = mean((forward(x) - y) ** 2)
  optimizer = sgd(lr: 0.1)
}
"#;
    check(src, &[2, 3, 2], &[2]);
}

#[test]
fn dropout_inside_a_cell_draws_anew_each_step() {
    // The cell's output is its input slice under dropout: with the same slice at every
    // step, the masks of different steps must differ, and be the same on every run.
    let src = r#"
fn step(h, x) {
  let d = dropout(x, 0.5)
  let out = (h + d, d)
  out
}
model M() {
  w = param([4], init: ones)
  fn forward(x: f32[B, 3, 4]) {
    let (ys, last) = scan(step, x * w, init: zeros[B, 4])
    ys
  }
}
train M on seq {
  loss = mean((forward(x) - y) ** 2)
  optimizer = sgd(lr: 0.1)
}
"#;
    let l = lower(src, &[3, 4], &[3, 4]);
    let mut env = env_for(&l, &[3, 4], &[3, 4]);
    env.values
        .insert("x".into(), ArrayD::ones(IxDyn(&[B, 3, 4])));
    env.values.insert("w".into(), ArrayD::ones(IxDyn(&[4])));
    let mut g = l.graph.clone();
    let pred = g.output("loss").expect("loss");
    let _ = pred;
    // Find the stacked ys: the transpose feeding the loss.
    let ys = g
        .schedule()
        .into_iter()
        .find(|&n| {
            matches!(g.node(n).op, Op::Transpose { .. })
                && g.ty(n).shape.len() == 3
                && g.ty(n).shape[1] == Dim::Known(3)
                && g.inputs(n)
                    .iter()
                    .any(|&i| matches!(g.node(i).op, Op::Scan { .. }))
        })
        .expect("stacked outputs");
    g.set_output("ys", ys);
    let a = interp::run(&g, &env, &["ys"]).expect("runs").remove(0);
    let b = interp::run(&g, &env, &["ys"]).expect("runs").remove(0);
    assert_eq!(a, b, "the same seed and step give the same masks");
    let step = |t: usize| a.index_axis(ndarray::Axis(1), t).to_owned();
    assert_ne!(step(0), step(1), "steps 0 and 1 drew the same mask");
    assert_ne!(step(1), step(2), "steps 1 and 2 drew the same mask");
    for v in a.iter() {
        assert!(
            *v == 0.0 || *v == 2.0,
            "dropout of ones at rate 0.5 gives 0 or 2, got {v}"
        );
    }
    // And the gradient through the masks is still exact.
    check(src, &[3, 4], &[3, 4]);
}

#[test]
fn training_graph_size_does_not_depend_on_the_length() {
    let src = |t: usize| {
        format!(
            r#"
model M(hidden: 3) {{
  layer = Lstm(2, hidden)
  fn forward(x: f32[B, {t}, 2]) {{ mean(layer(x), axis: 1) }}
}}
train M on seq {{
  loss = mean((forward(x) - y) ** 2)
  optimizer = adam(lr: 0.01)
}}
"#
        )
    };
    let nodes = |t: usize| {
        let l = lower(&src(t), &[t, 2], &[3]);
        let tg = dlc_compiler::train::training_graph(
            &l,
            &dlc_compiler::lower::Optimizer::with_defaults("adam", None).expect("adam"),
            None,
        )
        .expect("training graph");
        tg.graph.schedule().len()
    };
    assert_eq!(nodes(5), nodes(200));
}
