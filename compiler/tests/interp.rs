//! The reference interpreter's semantics: special values, NaN propagation, and `scan`.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::Graph;
use dlc_compiler::ops::Op;
use dlc_compiler::types::{DType, Dim, shape_of};
use ndarray::{ArrayD, IxDyn, array};

fn eval1(op: Op, x: &[f32]) -> Vec<f32> {
    let mut g = Graph::new();
    let a = g.add_ok(
        Op::Input {
            name: "a".into(),
            ty: (DType::F32, shape_of(&[x.len()])),
        },
        &[],
    );
    let y = g.add_ok(op, &[a]);
    g.set_output("y", y);
    let mut env = Env::new(0, 0);
    env.values.insert(
        "a".into(),
        ArrayD::from_shape_vec(IxDyn(&[x.len()]), x.to_vec()).expect("shape"),
    );
    run(&g, &env, &["y"]).expect("runs")[0]
        .iter()
        .copied()
        .collect()
}

fn eval2(op: Op, x: &[f32], y: &[f32]) -> Vec<f32> {
    let mut g = Graph::new();
    let a = g.add_ok(
        Op::Input {
            name: "a".into(),
            ty: (DType::F32, shape_of(&[x.len()])),
        },
        &[],
    );
    let b = g.add_ok(
        Op::Input {
            name: "b".into(),
            ty: (DType::F32, shape_of(&[y.len()])),
        },
        &[],
    );
    let r = g.add_ok(op, &[a, b]);
    g.set_output("r", r);
    let mut env = Env::new(0, 0);
    env.values.insert(
        "a".into(),
        ArrayD::from_shape_vec(IxDyn(&[x.len()]), x.to_vec()).expect("shape"),
    );
    env.values.insert(
        "b".into(),
        ArrayD::from_shape_vec(IxDyn(&[y.len()]), y.to_vec()).expect("shape"),
    );
    run(&g, &env, &["r"]).expect("runs")[0]
        .iter()
        .copied()
        .collect()
}

const INF: f32 = f32::INFINITY;

#[test]
fn special_values_are_exact() {
    assert_eq!(eval1(Op::Exp, &[-INF, 0.0, INF]), vec![0.0, 1.0, INF]);
    assert_eq!(eval1(Op::Log, &[0.0, 1.0, INF]), vec![-INF, 0.0, INF]);
    assert_eq!(eval1(Op::Tanh, &[-INF, 0.0, INF]), vec![-1.0, 0.0, 1.0]);
    assert_eq!(eval1(Op::Sigmoid, &[-INF, 0.0, INF]), vec![0.0, 0.5, 1.0]);
    assert_eq!(eval1(Op::Sqrt, &[0.0, 4.0, INF]), vec![0.0, 2.0, INF]);
    assert_eq!(eval1(Op::Softmax { axis: 0 }, &[-INF, 0.0]), vec![0.0, 1.0]);
}

#[test]
fn nan_propagates() {
    let nan = f32::NAN;
    for op in [
        Op::Relu,
        Op::Exp,
        Op::Log,
        Op::Tanh,
        Op::Sigmoid,
        Op::Abs,
        Op::Sign,
        Op::Neg,
    ] {
        let name = op.name();
        assert!(eval1(op, &[nan])[0].is_nan(), "{name}(NaN) is not NaN");
    }
    assert!(
        eval2(Op::Maximum, &[nan, 1.0], &[1.0, nan])
            .iter()
            .all(|v| v.is_nan())
    );
    assert!(
        eval2(Op::Minimum, &[nan, 1.0], &[1.0, nan])
            .iter()
            .all(|v| v.is_nan())
    );
    assert!(
        eval1(
            Op::Max {
                axes: vec![0],
                keep: false
            },
            &[1.0, nan, 3.0]
        )[0]
        .is_nan()
    );
    assert_eq!(eval1(Op::Relu, &[-1.0, 2.0]), vec![0.0, 2.0]);
}

#[test]
fn stable_sigmoid_and_log_softmax_on_large_inputs() {
    let s = eval1(Op::Sigmoid, &[-100.0, 100.0]);
    assert!(s[0] > 0.0 && s[0] < 1e-40 && s[1] == 1.0, "{s:?}");
    let l = eval1(Op::LogSoftmax { axis: 0 }, &[1000.0, 0.0]);
    assert_eq!(l[0], 0.0);
    assert_eq!(l[1], -1000.0);
}

/// h_t = tanh(h_{t-1} @ W + x_t) as a scan (time-major, W captured), against the same
/// loop written out; the final carry is the last step's output.
#[test]
fn scan_matches_the_unrolled_loop() {
    let b = Dim::Sym("B".into());
    let f32_of = |dims: Vec<Dim>| (DType::F32, dims);
    let mut body = Graph::new();
    let input = |g: &mut Graph, name: &str, dims: Vec<Dim>| {
        g.add_ok(
            Op::Input {
                name: name.into(),
                ty: f32_of(dims),
            },
            &[],
        )
    };
    let carry = input(&mut body, "carry0", vec![b.clone(), Dim::Known(2)]);
    let x = input(&mut body, "x0", vec![b.clone(), Dim::Known(2)]);
    let w = input(&mut body, "cap0", vec![Dim::Known(2), Dim::Known(2)]);
    let hw = body.add_ok(Op::matmul(), &[carry, w]);
    let pre = body.add_ok(Op::Add, &[hw, x]);
    let h = body.add_ok(Op::Tanh, &[pre]);
    body.set_output("carry0", h);
    body.set_output("y0", h);

    let mut g = Graph::new();
    g.bodies.push(body);
    let init = input(&mut g, "h0", vec![b.clone(), Dim::Known(2)]);
    let xs = input(&mut g, "xs", vec![Dim::Known(3), b.clone(), Dim::Known(2)]);
    let wp = g.add_ok(
        Op::Param {
            name: "w".into(),
            ty: (DType::F32, shape_of(&[2, 2])),
        },
        &[],
    );
    let scan = |g: &mut Graph, output: u32, out: Vec<Dim>| {
        g.add_ok(
            Op::Scan {
                body: 0,
                output,
                carries: 1,
                xs: 1,
                reverse: false,
                out: f32_of(out),
            },
            &[init, xs, wp],
        )
    };
    let last = scan(&mut g, 0, vec![b.clone(), Dim::Known(2)]);
    let hs = scan(&mut g, 1, vec![Dim::Known(3), b, Dim::Known(2)]);
    g.set_output("hs", hs);
    g.set_output("last", last);
    g.verify().expect("verifies");
    assert!(dlc_compiler::print::print_graph(&g).contains("body 0 {"));

    let wv = array![[0.5f64, -0.3], [0.2, 0.8]];
    let xv = ArrayD::from_shape_fn(IxDyn(&[3, 1, 2]), |i| (i[0] * 2 + i[2]) as f64 * 0.25 - 0.5);
    let mut env: Env<f64> = Env::new(0, 0);
    env.values.insert("w".into(), wv.clone().into_dyn());
    env.values
        .insert("h0".into(), ArrayD::zeros(IxDyn(&[1, 2])));
    env.values.insert("xs".into(), xv.clone());
    let mut got = run(&g, &env, &["hs", "last"]).expect("runs").into_iter();
    let (hs, last) = (got.next().expect("hs"), got.next().expect("last"));
    let mut h = ndarray::Array2::<f64>::zeros((1, 2));
    for t in 0..3 {
        let xt = xv
            .index_axis(ndarray::Axis(0), t)
            .to_owned()
            .into_dimensionality::<ndarray::Ix2>()
            .expect("2-D");
        h = (h.dot(&wv) + xt).mapv(f64::tanh);
        for j in 0..2 {
            assert!((hs[[t, 0, j]] - h[[0, j]]).abs() < 1e-12);
        }
    }
    for j in 0..2 {
        assert_eq!(last[[0, j]], hs[[2, 0, j]]);
    }
}

#[test]
fn verifier_catches_a_wrong_type() {
    let mut g = Graph::new();
    let a = g.add_ok(
        Op::Input {
            name: "a".into(),
            ty: (DType::F32, shape_of(&[3])),
        },
        &[],
    );
    let e = g.add_ok(Op::Exp, &[a]);
    g.set_output("e", e);
    assert!(g.verify().is_ok());
    g.g[e].ty.shape = shape_of(&[4]);
    assert!(g.verify().unwrap_err().contains("has type"));
}
