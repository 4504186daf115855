//! Every differentiable op's gradient (from the egg `grad` phase) against central finite
//! differences computed in f64 by the reference interpreter, over random shapes and values.

use dlc_compiler::autodiff;
use dlc_compiler::interp::{self, Env};
use dlc_compiler::ir::{Graph, NodeId};
use dlc_compiler::ops::{F64, Op};
use dlc_compiler::types::{DType, shape_of};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Build = dyn Fn(&mut Graph, &[NodeId]) -> NodeId;

/// loss = sum(op(inputs) ⊙ W) for fixed weights W, so every output element gets a
/// distinct adjoint; compare ∂loss/∂input with central differences.
fn check(build: &Build, inputs: &[(ArrayD<f64>, DType)]) -> Result<(), TestCaseError> {
    let mut g = Graph::new();
    let leaves: Vec<NodeId> = inputs
        .iter()
        .enumerate()
        .map(|(i, (a, dt))| {
            g.add_ok(
                Op::Input {
                    name: format!("a{i}"),
                    ty: (*dt, shape_of(a.shape())),
                },
                &[],
            )
        })
        .collect();
    let out = build(&mut g, &leaves);
    let oshape: Vec<usize> = g
        .ty(out)
        .shape
        .iter()
        .map(|d| d.known().expect("known dims"))
        .collect();
    let n: usize = oshape.iter().product();
    let w = g.add_ok(
        Op::Const {
            shape: oshape.clone(),
            data: (0..n)
                .map(|i| F64::new(0.3 + (i as f64 * 0.7).sin()))
                .collect(),
        },
        &[],
    );
    let prod = g.add_ok(Op::Mul, &[out, w]);
    let loss = g.add_ok(
        Op::Sum {
            axes: (0..oshape.len()).collect(),
            keep: false,
        },
        &[prod],
    );
    g.set_output("loss", loss);
    g.verify().map_err(TestCaseError::fail)?;
    let wrt: Vec<NodeId> = leaves
        .iter()
        .zip(inputs)
        .filter(|(_, (_, dt))| *dt == DType::F32)
        .map(|(l, _)| *l)
        .collect();
    let (gg, _) = autodiff::grad(&g, "loss", &wrt).map_err(TestCaseError::fail)?;
    gg.verify().map_err(TestCaseError::fail)?;
    let env_of = |vals: &[ArrayD<f64>]| {
        let mut env = Env::new(1, 1);
        for (i, v) in vals.iter().enumerate() {
            env.values.insert(format!("a{i}"), v.clone());
        }
        env
    };
    let base: Vec<ArrayD<f64>> = inputs.iter().map(|(a, _)| a.clone()).collect();
    let loss_at = |vals: &[ArrayD<f64>]| -> f64 {
        interp::run(&g, &env_of(vals), &["loss"]).expect("runs")[0]
            .iter()
            .next()
            .copied()
            .unwrap_or(f64::NAN)
    };
    for (k, (a, dt)) in inputs.iter().enumerate() {
        if *dt != DType::F32 {
            continue;
        }
        let grad = interp::run(&gg, &env_of(&base), &[&format!("grad:a{k}")])
            .map_err(TestCaseError::fail)?
            .remove(0);
        prop_assert_eq!(grad.shape(), a.shape());
        for (j, &ana) in grad.iter().enumerate() {
            let x = a.as_slice().expect("standard")[j];
            let h = 1e-6 * x.abs().max(1.0);
            let mut plus = base.clone();
            plus[k].as_slice_mut().expect("standard")[j] = x + h;
            let mut minus = base.clone();
            minus[k].as_slice_mut().expect("standard")[j] = x - h;
            let num = (loss_at(&plus) - loss_at(&minus)) / (2.0 * h);
            prop_assert!(
                (ana - num).abs() <= 1e-5 + 1e-4 * num.abs(),
                "input {k} element {j}: analytic {ana} vs numeric {num}\n{}",
                dlc_compiler::print::print_graph(&gg)
            );
        }
    }
    Ok(())
}

fn arr(shape: &[usize], vals: &[f64]) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), vals.iter().cycle().take(n).copied().collect())
        .expect("shape")
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 1..4)
}

/// Values away from 0 (kinks of relu/abs) and pairwise distinct (ties of max).
fn values(lo: f64, hi: f64) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(lo..hi, 64).prop_map(|mut v| {
        for (i, x) in v.iter_mut().enumerate() {
            if x.abs() < 0.05 {
                *x += 0.1;
            }
            *x += i as f64 * 1e-3;
        }
        v
    })
}

fn unary(op: Op) -> impl Fn(&mut Graph, &[NodeId]) -> NodeId {
    move |g, l| g.add_ok(op.clone(), &[l[0]])
}

fn binary(op: Op) -> impl Fn(&mut Graph, &[NodeId]) -> NodeId {
    move |g, l| g.add_ok(op.clone(), &[l[0], l[1]])
}

const F: DType = DType::F32;

/// `cases` random cases, after replaying the seeds committed in this file's sibling
/// `<this file>.proptest-regressions` (where a new failure's seed is also written, to be
/// committed).
fn replaying(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(replaying(24))]

    #[test]
    fn smooth_unary(s in shape(), v in values(-2.0, 2.0), which in 0usize..6) {
        let op = [Op::Neg, Op::Exp, Op::Tanh, Op::Sigmoid, Op::Relu, Op::Abs][which].clone();
        check(&unary(op), &[(arr(&s, &v), F)])?;
    }

    #[test]
    fn positive_unary(s in shape(), v in values(0.2, 3.0), which in 0usize..2) {
        let op = [Op::Log, Op::Sqrt][which].clone();
        check(&unary(op), &[(arr(&s, &v), F)])?;
    }

    #[test]
    fn broadcasting_binary(pair in 0usize..6, v in values(0.3, 2.0), w in values(-2.0, 2.0), which in 0usize..7) {
        let (sa, sb): (&[usize], &[usize]) = [
            (&[2, 3][..], &[2, 3][..]), (&[2, 3], &[3]), (&[2, 3], &[2, 1]), (&[3], &[2, 3]), (&[], &[2, 3]), (&[2, 1, 3], &[4, 1]),
        ][pair];
        let op = [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Pow, Op::Maximum, Op::Minimum][which].clone();
        // Positive bases for pow and non-zero divisors; distinct values for max/min.
        check(&binary(op), &[(arr(sa, &v), F), (arr(sb, &w), F)])?;
    }

    #[test]
    fn reductions(s in shape(), v in values(-2.0, 2.0), mask in 1usize..8, keep: bool, which in 0usize..3) {
        let axes: Vec<usize> = (0..s.len()).filter(|a| mask & (1 << a) != 0).collect();
        let axes = if axes.is_empty() { vec![0] } else { axes };
        let op = [Op::Sum { axes: axes.clone(), keep }, Op::Mean { axes: axes.clone(), keep }, Op::Max { axes, keep }][which].clone();
        check(&unary(op), &[(arr(&s, &v), F)])?;
    }

    #[test]
    fn softmaxes(s in shape(), v in values(-3.0, 3.0), axis in 0usize..3, log: bool) {
        let axis = axis % s.len();
        let op = if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
        check(&unary(op), &[(arr(&s, &v), F)])?;
    }

    #[test]
    fn layout(v in values(-2.0, 2.0), which in 0usize..6) {
        use dlc_compiler::types::Dim::Known as K;
        let x = arr(&[2, 3, 2], &v);
        let b: Box<Build> = match which {
            0 => Box::new(unary(Op::Reshape { shape: vec![K(3), K(4)] })),
            1 => Box::new(unary(Op::Transpose { perm: vec![2, 0, 1] })),
            2 => Box::new(unary(Op::SumTo { shape: vec![K(3), K(1)] })),
            3 => Box::new(unary(Op::Slice { axis: 1, start: 1, end: 3, step: 1 })),
            4 => Box::new(|g: &mut Graph, l: &[NodeId]| {
                let s = g.add_ok(Op::Slice { axis: 0, start: 0, end: 1, step: 1 }, &[l[0]]);
                g.add_ok(Op::Broadcast { shape: vec![K(4), K(3), K(2)] }, &[s])
            }),
            _ => Box::new(|g: &mut Graph, l: &[NodeId]| {
                let t = g.add_ok(Op::Tanh, &[l[0]]);
                g.add_ok(Op::Concat { axis: 1 }, &[l[0], t, l[0]])
            }),
        };
        check(&*b, &[(x, F)])?;
    }

    #[test]
    fn matmuls(m in 1usize..5, k in 1usize..5, n in 1usize..5, v in values(-2.0, 2.0), w in values(-2.0, 2.0), kind in 0usize..3) {
        let (sa, sb) = match kind {
            0 => (vec![m, k], vec![k, n]),
            1 => (vec![2, m, k], vec![k, n]),
            _ => (vec![2, m, k], vec![2, k, n]),
        };
        check(&binary(Op::MatMul { ta: false, tb: false }), &[(arr(&sa, &v), F), (arr(&sb, &w), F)])?;
    }

    #[test]
    fn gather_and_scatter(v in values(-2.0, 2.0), idx in prop::collection::vec(0usize..5, 4)) {
        let ids = arr(&[2, 2], &idx.iter().map(|&i| i as f64).collect::<Vec<_>>());
        check(&|g: &mut Graph, l: &[NodeId]| g.add_ok(Op::Gather, &[l[0], l[1]]), &[(arr(&[5, 3], &v), F), (ids.clone(), DType::I32)])?;
        check(&|g: &mut Graph, l: &[NodeId]| g.add_ok(Op::ScatterAdd { rows: 5 }, &[l[1], l[0]]), &[(arr(&[2, 2, 3], &v), F), (ids, DType::I32)])?;
    }

    #[test]
    fn select_branches(v in values(-2.0, 2.0), w in values(-2.0, 2.0), c in prop::collection::vec(0u8..2, 6)) {
        let cond = arr(&[2, 3], &c.iter().map(|&b| b as f64).collect::<Vec<_>>());
        check(&|g: &mut Graph, l: &[NodeId]| {
            let c = g.add_ok(Op::StopGradient, &[l[2]]);
            g.add_ok(Op::Select, &[c, l[0], l[1]])
        }, &[(arr(&[2, 3], &v), F), (arr(&[3], &w), F), (cond, F)])?;
    }
}

/// The whole MLP of models/mlp.dl: ∂loss/∂parameters in f64 against finite differences,
/// and the same gradients computed in f32 by the optimized graph on the JIT (fused
/// kernels, row kernels, the GEMM core) against the same differences.
#[test]
fn mlp_loss_gradient() {
    use dlc_compiler::lower::{Mode, Program};
    let path = dlc_tests::root().join("models/mlp.dl");
    let prog = Program::parse("mlp.dl", &std::fs::read(&path).expect("read"))
        .unwrap_or_else(|_| panic!("parses"));
    let sig = dlc_runtime::datasig::by_name("digits").expect("digits");
    let (l, _) = prog
        .lower_training(&sig, Mode::Train)
        .unwrap_or_else(|_| panic!("lowers"));
    let wrt: Vec<NodeId> = l
        .graph
        .leaves(|op| matches!(op, Op::Param { .. }))
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let (gg, _) = autodiff::grad(&l.graph, "loss", &wrt).expect("grad");
    let mut env: Env<f64> = Env::new(3, 0);
    for (i, p) in l.params.iter().enumerate() {
        let n: usize = p.shape.iter().product();
        let vals: Vec<f64> = (0..n)
            .map(|j| 0.2 * ((j * 7 + i * 13) as f64 * 0.37).sin())
            .collect();
        env.values.insert(
            p.name.clone(),
            ArrayD::from_shape_vec(IxDyn(&p.shape), vals).expect("shape"),
        );
    }
    env.values.insert(
        "x".into(),
        ArrayD::from_shape_fn(IxDyn(&[3, 8, 8]), |ix| {
            ((ix[0] * 64 + ix[1] * 8 + ix[2]) as f64 * 0.11).cos()
        }),
    );
    env.values.insert(
        "y".into(),
        ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, 7.0, 3.0]).expect("shape"),
    );
    let loss = |env: &Env<f64>| {
        interp::run(&l.graph, env, &["loss"]).expect("runs")[0]
            .iter()
            .next()
            .copied()
            .unwrap_or(f64::NAN)
    };
    let names: Vec<String> = l
        .params
        .iter()
        .map(|p| format!("grad:{}", p.name))
        .collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut env32: Env<f32> = Env::new(3, 0);
    for (k, v) in &env.values {
        env32.values.insert(k.clone(), v.mapv(|x| x as f32));
    }
    let optimized = dlc_compiler::opt::optimize(&gg).graph;
    let jit_grads = dlc_compiler::jit::exec::JitGraph::new(optimized, 2)
        .expect("jit")
        .run(&env32, &refs)
        .expect("jit runs");
    for (p, jit_grad) in l.params.iter().zip(&jit_grads) {
        let grad = interp::run(&gg, &env, &[&format!("grad:{}", p.name)])
            .expect("grad runs")
            .remove(0);
        // A spread of elements of every parameter.
        for j in (0..grad.len()).step_by(grad.len() / 7 + 1) {
            let x = env.values[&p.name].as_slice().expect("std")[j];
            let h = 1e-6;
            let mut e2 = Env::new(3, 0);
            e2.values = env.values.clone();
            e2.values
                .get_mut(&p.name)
                .expect("p")
                .as_slice_mut()
                .expect("std")[j] = x + h;
            let up = loss(&e2);
            e2.values
                .get_mut(&p.name)
                .expect("p")
                .as_slice_mut()
                .expect("std")[j] = x - h;
            let down = loss(&e2);
            let num = (up - down) / (2.0 * h);
            let ana = grad.as_slice().expect("std")[j];
            assert!(
                (ana - num).abs() <= 1e-6 + 1e-4 * num.abs(),
                "{} [{j}]: {ana} vs {num}",
                p.name
            );
            let jit = jit_grad.as_slice().expect("std")[j] as f64;
            assert!(
                (jit - num).abs() <= 1e-5 + 1e-3 * num.abs(),
                "{} [{j}] on the JIT: {jit} vs {num}",
                p.name
            );
        }
    }
}

/// Distinct values (no ties between pooling candidates), from a seed.
fn distinct(shape: &[usize], seed: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| 1.5 * (i as f64 * 0.73 + seed).sin() + i as f64 * 1e-3)
            .collect(),
    )
    .expect("shape")
}

/// A window geometry: (size, stride, padding) for an input of h × w; "same" padding by
/// TensorFlow's rule.
fn geometry(
    size: [usize; 2],
    stride: [usize; 2],
    same: bool,
    h: usize,
    w: usize,
) -> dlc_compiler::window::Geometry {
    use dlc_compiler::window::{Geometry, same_padding};
    let mut pad = [0; 4];
    if same {
        let (t, b) = same_padding(h, size[0], stride[0]);
        let (l, r) = same_padding(w, size[1], stride[1]);
        pad = [t, b, l, r];
    }
    Geometry { size, stride, pad }
}

proptest! {
    #![proptest_config(replaying(32))]

    /// conv2d with respect to its input and its filter: random shapes, strides, paddings.
    #[test]
    fn conv2d_gradients(b in 1usize..3, h in 3usize..7, w in 3usize..7, c in 1usize..4, f in 1usize..4,
                        kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4, same: bool, seed in 0.0f64..6.0) {
        let geo = geometry([kh, kw], [sh, sw], same, h, w);
        prop_assume!(geo.out_size(h, w).is_some());
        check(&move |g: &mut Graph, l: &[NodeId]| g.add_ok(Op::Conv2d { geo }, &[l[0], l[1]]),
              &[(distinct(&[b, h, w, c], seed), F), (distinct(&[kh, kw, c, f], seed + 1.0), F)])?;
    }

    /// max and average pooling, including overlapping windows (stride < size).
    #[test]
    fn pooling_gradients(b in 1usize..3, h in 2usize..7, w in 2usize..7, c in 1usize..3,
                         kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4, max: bool, seed in 0.0f64..6.0) {
        let geo = geometry([kh, kw], [sh, sw], false, h, w);
        prop_assume!(geo.out_size(h, w).is_some());
        let op = if max { Op::MaxPool2d { geo } } else { Op::AvgPool2d { geo } };
        check(&unary(op), &[(distinct(&[b, h, w, c], seed), F)])?;
    }
}

proptest! {
    #![proptest_config(replaying(24))]

    /// A square sparse matrix (CSR of a random pattern with random values) times a dense
    /// matrix, and its transpose: the gradient with respect to the dense operand.
    #[test]
    fn sparse_products(pattern in prop::collection::vec(0u8..2, 16), vals in values(-2.0, 2.0), h in values(-2.0, 2.0), transposed: bool) {
        let n = 4;
        let (mut indptr, mut indices, mut data) = (vec![0.0], Vec::new(), Vec::new());
        for r in 0..n {
            for c in 0..n {
                if pattern[r * n + c] == 1 {
                    indices.push(c as f64);
                    data.push(vals[(r * n + c) % vals.len()]);
                }
            }
            indptr.push(indices.len() as f64);
        }
        let z = indices.len();
        let op = if transposed { Op::SpMMT } else { Op::SpMM };
        check(
            &move |g: &mut Graph, l: &[NodeId]| g.add_ok(op.clone(), &[l[1], l[2], l[3], l[0]]),
            &[
                (arr(&[n, 3], &h), F),
                (arr(&[n + 1], &indptr), DType::I32),
                (arr(&[z], &indices), DType::I32),
                // The matrix's values are data (spmm has no gradient for them): typed i32
                // here only so that the check does not differentiate with respect to them.
                (ArrayD::from_shape_vec(IxDyn(&[z]), data).unwrap(), DType::I32),
            ],
        )?;
    }

    /// Rows of each point set picked by indices (EdgeConv's neighbours), and its scatter.
    #[test]
    fn point_gathers(v in values(-2.0, 2.0), idx in prop::collection::vec(0usize..4, 12)) {
        let ids = arr(&[2, 3, 2], &idx.iter().map(|&i| i as f64).collect::<Vec<_>>());
        check(&|g: &mut Graph, l: &[NodeId]| g.add_ok(Op::GatherPoints, &[l[0], l[1]]), &[(arr(&[2, 4, 3], &v), F), (ids.clone(), DType::I32)])?;
        check(&|g: &mut Graph, l: &[NodeId]| g.add_ok(Op::ScatterPoints { points: 4 }, &[l[1], l[0]]), &[(arr(&[2, 3, 2, 3], &v), F), (ids, DType::I32)])?;
    }
}
