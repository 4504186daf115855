//! JIT kernels against the reference interpreter: random elementwise bodies over random
//! shapes (sizes that are not multiples of 4, size 1, every broadcasting pattern), and
//! matmuls with folded transposes through gemm, on 1 and 2 threads.

use dlc_compiler::interp::{self, Env};
use dlc_compiler::ir::{Graph, NodeId};
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::ops::{Dist, F64, KernelKind, Op};
use dlc_compiler::types::{DType, Dim, shape_of};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::collections::HashMap;

/// A graph of one fused kernel whose body is `body`, fed by inputs `x{i}`.
fn wrap(body: Graph, kind: KernelKind) -> Graph {
    let mut g = Graph::new();
    let mut ins = Vec::new();
    for n in body.g.node_indices() {
        let Op::Input { name, .. } = &body.node(n).op else {
            continue;
        };
        let t = body.ty(n).clone();
        let k: usize = name[2..].parse().expect("in<k>");
        ins.push((
            k,
            g.add_ok(
                Op::Input {
                    name: format!("x{k}"),
                    ty: (t.dtype, t.shape),
                },
                &[],
            ),
        ));
    }
    ins.sort();
    let operands: Vec<NodeId> = ins.iter().map(|(_, n)| *n).collect();
    let outs: Vec<(String, NodeId)> = body.outputs.clone();
    g.bodies.push(body.clone());
    for (j, (_, o)) in outs.iter().enumerate() {
        let t = body.ty(*o).clone();
        let n = g.add_ok(
            Op::Fused {
                body: 0,
                output: j as u32,
                kind,
                out: (t.dtype, t.shape),
            },
            &operands,
        );
        g.set_output(format!("r{j}"), n);
    }
    g.verify().expect("verifies");
    g
}

fn values(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 250.0) - 2.0)
            .collect(),
    )
    .expect("shape")
}

fn compare(g: &Graph, env: &Env<f32>, threads: usize) -> Result<(), String> {
    compare_within(g, env, threads, 1e-5)
}

/// `compare` with relative tolerance `tol` (of max(|value|, 1)): long sums in f32 (a
/// convolution over 144 taps) differ in their last bits between summation orders.
fn compare_within(g: &Graph, env: &Env<f32>, threads: usize, tol: f32) -> Result<(), String> {
    let names: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let want = interp::run(g, env, &refs)?;
    let mut jit = JitGraph::new(g.clone(), threads)?;
    let got = jit.run(env, &refs)?;
    for ((w, g2), name) in want.iter().zip(&got).zip(&names) {
        if w.shape() != g2.shape() {
            return Err(format!("{name}: shape {:?} vs {:?}", w.shape(), g2.shape()));
        }
        for (a, b) in w.iter().zip(g2.iter()) {
            let ok =
                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * a.abs().max(1.0);
            if !ok {
                return Err(format!("{name}: interpreter {a} vs jit {b}"));
            }
        }
    }
    Ok(())
}

/// Ops for random bodies: (op, arity).
fn ops() -> Vec<(Op, usize)> {
    vec![
        (Op::Add, 2),
        (Op::Sub, 2),
        (Op::Mul, 2),
        (Op::Div, 2),
        (Op::Maximum, 2),
        (Op::Minimum, 2),
        (Op::Gt, 2),
        (Op::Le, 2),
        (Op::Ne, 2),
        (Op::Neg, 1),
        (Op::Abs, 1),
        (Op::Relu, 1),
        (Op::Exp, 1),
        (Op::Tanh, 1),
        (Op::Sigmoid, 1),
        (Op::Sign, 1),
        (Op::Sqrt, 1),
        (Op::Log, 1),
        (Op::Select, 3),
    ]
}

/// A matmul kernel (every transpose combination, with or without an epilogue) against
/// the interpreter.
fn matmul_case(
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    epilogue: bool,
    threads: usize,
) -> Result<(), String> {
    let a_shape = if ta { vec![k, m] } else { vec![m, k] };
    let b_shape = if tb { vec![n, k] } else { vec![k, n] };
    let mut body = Graph::new();
    let a = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, shape_of(&a_shape)),
        },
        &[],
    );
    let b = body.add_ok(
        Op::Input {
            name: "in1".into(),
            ty: (DType::F32, shape_of(&b_shape)),
        },
        &[],
    );
    let bias = body.add_ok(
        Op::Input {
            name: "in2".into(),
            ty: (DType::F32, shape_of(&[n])),
        },
        &[],
    );
    let mm = body.add_ok(Op::MatMul { ta, tb }, &[a, b]);
    let out = if epilogue {
        let s = body.add_ok(Op::Add, &[mm, bias]);
        body.add_ok(Op::Relu, &[s])
    } else {
        mm
    };
    body.set_output("out0", out);
    if !epilogue {
        // Keep the bias input used so the kernel's operands stay the same.
        let c = body.add_ok(
            Op::Const {
                shape: vec![],
                data: vec![F64::new(0.0)],
            },
            &[],
        );
        let z = body.add_ok(Op::Mul, &[bias, c]);
        body.set_output("out1", z);
    }
    let g = wrap(body, KernelKind::MatMul);
    let mut env = Env::new(0, 0);
    env.values.insert("x0".into(), values(&a_shape, 1));
    env.values.insert("x1".into(), values(&b_shape, 2));
    env.values.insert("x2".into(), values(&[n], 3));
    compare(&g, &env, threads)
}

/// Empty products: no rows, or an inner size of 0 (the product is zeros), with an
/// epilogue, on 1 and 2 threads.
#[test]
fn empty_matmuls_match_the_interpreter() {
    for (m, k) in [(0, 0), (0, 3), (3, 0), (5, 0)] {
        for threads in [1, 2] {
            for epilogue in [false, true] {
                matmul_case(m, k, 4, false, false, epilogue, threads)
                    .unwrap_or_else(|e| panic!("m={m} k={k}: {e}"));
            }
        }
    }
}

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
    #![proptest_config(replaying(48))]

    /// A random elementwise body over inputs of a full shape, a suffix, a column, and a
    /// scalar, with several outputs.
    #[test]
    fn loop_kernels_match_the_interpreter(rows in 1usize..7, cols in 1usize..11, picks in prop::collection::vec((0usize..19, 0usize..8, 0usize..8, 0usize..8), 1..12), seed in 0u64..100, sym: bool) {
        let full: Vec<Dim> = vec![if sym { Dim::Sym("B".into()) } else { Dim::Known(rows) }, Dim::Known(cols)];
        let shapes: Vec<Vec<Dim>> = vec![full.clone(), vec![Dim::Known(cols)], vec![full[0].clone(), Dim::Known(1)], vec![]];
        let mut body = Graph::new();
        let mut pool: Vec<NodeId> = shapes.iter().enumerate().map(|(i, s)| body.add_ok(Op::Input { name: format!("in{i}"), ty: (DType::F32, s.clone()) }, &[])).collect();
        let c = body.scalar(0.5);
        pool.push(c);
        let r = body.add_ok(Op::Random { key: 3, dist: Dist::Uniform, shape: full.clone() }, &[]);
        pool.push(r);
        let table = ops();
        for (k, a, b2, c2) in picks {
            let (op, arity) = table[k].clone();
            let args: Vec<NodeId> = [a, b2, c2][..arity].iter().map(|&i| pool[i % pool.len()]).collect();
            if let Ok(n) = body.add(op, &args) {
                pool.push(n);
            }
        }
        let outs: Vec<NodeId> = pool.iter().rev().take(3).copied().collect();
        for (j, o) in outs.iter().enumerate() {
            body.set_output(format!("out{j}"), *o);
        }
        let g = wrap(body, KernelKind::Loop);
        let mut env = Env::new(seed, 2);
        let concrete = |s: &Vec<Dim>| -> Vec<usize> { s.iter().map(|d| d.known().unwrap_or(rows)).collect() };
        for (i, s) in shapes.iter().enumerate() {
            env.values.insert(format!("x{i}"), values(&concrete(s), seed + i as u64));
        }
        compare(&g, &env, 1).map_err(TestCaseError::fail)?;
    }

    /// Matmuls with every transpose combination and an epilogue, on 1 and 2 threads.
    #[test]
    fn matmul_kernels_match_the_interpreter(m in 0usize..40, k in 0usize..40, n in 1usize..40, ta: bool, tb: bool, epilogue: bool, threads in 1usize..3) {
        matmul_case(m, k, n, ta, tb, epilogue, threads).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn plans_say_what_runs_natively() {
    let mut body = Graph::new();
    let a = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, shape_of(&[5])),
        },
        &[],
    );
    let e = body.add_ok(Op::Exp, &[a]);
    body.set_output("out0", e);
    let mut j = JitGraph::new(wrap(body, KernelKind::Loop), 1).expect("jit");
    let lines = j.plan_all(&HashMap::new()).expect("plans");
    assert!(lines[0].contains("native loop"), "{lines:?}");
    assert_eq!(j.native_kernels(), (1, 1));
    assert!(j.clif()[0].1.contains("function"), "CLIF text is kept");
}

/// A matmul with a constant operand (the perceptron's weights) runs natively, with the
/// constant on either side and transposed or not, and gives the interpreter's values.
#[test]
fn matmuls_with_a_constant_operand_are_native() {
    let (rows, k, n) = (5usize, 3usize, 2usize);
    for (const_a, t) in [(false, false), (false, true), (true, false), (true, true)] {
        let data: Vec<F64> = (0..k * n).map(|i| F64::new(i as f64 * 0.5 - 1.0)).collect();
        let mut body = Graph::new();
        let x_shape = if const_a {
            vec![k, rows]
        } else {
            vec![rows, k]
        };
        let x = body.add_ok(
            Op::Input {
                name: "in0".into(),
                ty: (DType::F32, shape_of(&x_shape)),
            },
            &[],
        );
        // The constant: [n, k] as A (so A·x is [n, rows]), [k, n] as B; stored transposed
        // when `t`.
        let c_shape = match (const_a, t) {
            (true, false) => vec![n, k],
            (true, true) | (false, false) => vec![k, n],
            (false, true) => vec![n, k],
        };
        let c = body.add_ok(
            Op::Const {
                shape: c_shape,
                data,
            },
            &[],
        );
        let (ops, ta, tb) = if const_a {
            ([c, x], t, false)
        } else {
            ([x, c], false, t)
        };
        let mm = body.add_ok(Op::MatMul { ta, tb }, &ops);
        let one = body.scalar(1.0);
        let s = body.add_ok(Op::Add, &[mm, one]);
        let out = body.add_ok(Op::Sigmoid, &[s]);
        body.set_output("out0", out);
        let g = wrap(body, KernelKind::MatMul);
        let mut env = Env::new(0, 0);
        env.values.insert("x0".into(), values(&x_shape, 4));
        compare(&g, &env, 1).expect("matches the interpreter");
        let mut jit = JitGraph::new(g, 1).expect("jit");
        let lines = jit.plan_all(&HashMap::new()).expect("plans");
        assert_eq!(jit.native_kernels(), (1, 1), "{lines:?}");
    }
}

/// A product big enough to be split across threads gives the same bits on 1 and 2
/// threads, and matches the interpreter.
#[test]
fn split_gemm_is_exact_and_deterministic() {
    let (m, k, n) = (256, 256, 130);
    let mut body = Graph::new();
    let a = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, shape_of(&[k, m])),
        },
        &[],
    );
    let b = body.add_ok(
        Op::Input {
            name: "in1".into(),
            ty: (DType::F32, shape_of(&[k, n])),
        },
        &[],
    );
    let mm = body.add_ok(
        Op::MatMul {
            ta: true,
            tb: false,
        },
        &[a, b],
    );
    body.set_output("out0", mm);
    let g = wrap(body, KernelKind::MatMul);
    assert!(m * n * k >= dlc_compiler::jit::exec::PARALLEL_GEMM_MIN);
    let mut env = Env::new(0, 0);
    env.values.insert("x0".into(), values(&[k, m], 5));
    env.values.insert("x1".into(), values(&[k, n], 6));
    let one = JitGraph::new(g.clone(), 1)
        .expect("jit")
        .run(&env, &["r0"])
        .expect("runs");
    let two = JitGraph::new(g.clone(), 2)
        .expect("jit")
        .run(&env, &["r0"])
        .expect("runs");
    assert_eq!(one, two, "the thread count must not change the result");
    compare(&g, &env, 2).expect("matches the interpreter");
}

/// A matmul epilogue runs on row panels of the product right after the GEMM: on one
/// thread the product below is done as two panels, on two threads as one per thread, with
/// a width (7) whose rows do not end on a vector boundary and a dropout-style random
/// mask. Same bits either way, and the interpreter's values.
#[test]
fn matmul_epilogues_run_per_panel_exactly() {
    let (m, k, n) = (40_003, 16, 7);
    let input = |body: &mut Graph, i: usize, s: &[usize]| {
        body.add_ok(
            Op::Input {
                name: format!("in{i}"),
                ty: (DType::F32, shape_of(s)),
            },
            &[],
        )
    };
    let mut body = Graph::new();
    let a = input(&mut body, 0, &[m, k]);
    let b = input(&mut body, 1, &[k, n]);
    let bias = input(&mut body, 2, &[n]);
    let mm = body.add_ok(
        Op::MatMul {
            ta: false,
            tb: false,
        },
        &[a, b],
    );
    let s = body.add_ok(Op::Add, &[mm, bias]);
    let r = body.add_ok(Op::Relu, &[s]);
    let u = body.add_ok(
        Op::Random {
            key: 7,
            dist: Dist::Uniform,
            shape: shape_of(&[m, n]),
        },
        &[],
    );
    let out = body.add_ok(Op::Mul, &[r, u]);
    body.set_output("out0", out);
    body.set_output("out1", s);
    let g = wrap(body, KernelKind::MatMul);
    assert!(m * n * k >= dlc_compiler::jit::exec::PARALLEL_GEMM_MIN);
    let mut env = Env::new(3, 4);
    env.values.insert("x0".into(), values(&[m, k], 1));
    env.values.insert("x1".into(), values(&[k, n], 2));
    env.values.insert("x2".into(), values(&[n], 3));
    let mut one = JitGraph::new(g.clone(), 1).expect("jit");
    let lines = one.plan_all(&HashMap::new()).expect("plans");
    assert!(lines[0].contains("epilogue per row panel"), "{lines:?}");
    let one = one.run(&env, &["r0", "r1"]).expect("runs");
    let two = JitGraph::new(g.clone(), 2)
        .expect("jit")
        .run(&env, &["r0", "r1"])
        .expect("runs");
    assert_eq!(one, two, "the thread count must not change the result");
    compare(&g, &env, 1).expect("matches the interpreter");
    compare(&g, &env, 2).expect("matches the interpreter");
}

/// A loop kernel big enough to be split across threads: same bits on 1 and 2 threads
/// (odd sizes included, so the vector slices and the scalar tail meet correctly).
#[test]
fn split_loops_are_exact_and_deterministic() {
    for n in [
        dlc_compiler::jit::exec::PARALLEL_LOOP_MIN + 3,
        2 * dlc_compiler::jit::exec::PARALLEL_LOOP_MIN + 1,
    ] {
        let mut body = Graph::new();
        let a = body.add_ok(
            Op::Input {
                name: "in0".into(),
                ty: (DType::F32, shape_of(&[n])),
            },
            &[],
        );
        let b = body.add_ok(
            Op::Input {
                name: "in1".into(),
                ty: (DType::F32, shape_of(&[n])),
            },
            &[],
        );
        let s = body.add_ok(Op::Mul, &[a, b]);
        let t = body.add_ok(Op::Tanh, &[s]);
        let r = body.add_ok(
            Op::Random {
                key: 1,
                dist: Dist::Uniform,
                shape: shape_of(&[n]),
            },
            &[],
        );
        let u = body.add_ok(Op::Add, &[t, r]);
        body.set_output("out0", u);
        body.set_output("out1", s);
        let g = wrap(body, KernelKind::Loop);
        let mut env = Env::new(3, 4);
        env.values.insert("x0".into(), values(&[n], 1));
        env.values.insert("x1".into(), values(&[n], 2));
        let one = JitGraph::new(g.clone(), 1)
            .expect("jit")
            .run(&env, &["r0", "r1"])
            .expect("runs");
        let two = JitGraph::new(g.clone(), 2)
            .expect("jit")
            .run(&env, &["r0", "r1"])
            .expect("runs");
        assert_eq!(one, two);
        compare(&g, &env, 2).expect("matches the interpreter");
    }
}

/// A random row-kernel body (see `row_kernels_match_the_interpreter`) and its inputs:
/// elementwise ops within a class of values (`[B, C]`, `[B]`, invariant), of a `[B, C]`
/// value with an invariant one or a per-row `[B, 1]` one, and reductions.
fn random_row_kernel(
    rows: usize,
    cols: usize,
    picks: &[(usize, usize, usize)],
    seed: u64,
) -> (Graph, Env<f32>) {
    let b = Dim::Sym("B".into());
    let full = vec![b.clone(), Dim::Known(cols)];
    let mut body = Graph::new();
    let x = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, full.clone()),
        },
        &[],
    );
    let bias = body.add_ok(
        Op::Input {
            name: "in1".into(),
            ty: (DType::F32, shape_of(&[cols])),
        },
        &[],
    );
    let col = body.add_ok(
        Op::Input {
            name: "in2".into(),
            ty: (DType::F32, vec![b.clone()]),
        },
        &[],
    );
    let labels = body.add_ok(
        Op::Input {
            name: "in3".into(),
            ty: (DType::I32, vec![b.clone()]),
        },
        &[],
    );
    let hot = body.add_ok(Op::OneHot { depth: cols }, &[labels]);
    // Values by class: [B, C] (or broadcastable to it), [B], invariant.
    let half = body.scalar(0.5);
    let same = body.add_ok(
        Op::Broadcast {
            shape: full.clone(),
        },
        &[half],
    );
    let mut wide = vec![x, body.add_ok(Op::Add, &[x, bias]), hot, same];
    let mut narrow = vec![col];
    let mut inv = vec![bias, half];
    let table = ops();
    let reds = reductions();
    for &(k, a, c) in picks {
        if k < 19 {
            // Elementwise, within one class (or a wide value with an invariant one).
            let (op, arity) = table[k].clone();
            if matches!(
                op,
                Op::Gt | Op::Le | Op::Ne | Op::Sign | Op::Select | Op::Sqrt | Op::Log | Op::Div
            ) {
                // Discontinuous or unbounded near 0: sums taken in another order (four
                // lanes, then across) may differ in the last bit and land on the other
                // side; the loop-kernel test covers these ops.
                continue;
            }
            let on_narrow = a % 3 == 2;
            let cls = if on_narrow { &narrow } else { &wide };
            let mut args = vec![cls[a % cls.len()]];
            if arity >= 2 {
                args.push(if !on_narrow && c % 4 == 3 {
                    // A wide value with a per-row one: `[B, C]` with `[B, 1]`.
                    let r = narrow[c % narrow.len()];
                    body.add_ok(
                        Op::Reshape {
                            shape: vec![b.clone(), Dim::Known(1)],
                        },
                        &[r],
                    )
                } else if c % 2 == 0 {
                    cls[c % cls.len()]
                } else {
                    inv[c % inv.len()]
                });
            }
            if arity == 3 {
                args.push(cls[(a + c) % cls.len()]);
            }
            if let Ok(n) = body.add(op, &args) {
                let sh = body.ty(n).shape.clone();
                if sh.iter().skip(1).any(|d| *d == b) {
                    // `[B]` against `[1, 1]` broadcasts to `[1, B]`: rows along columns,
                    // not a row kernel's layout; left unused.
                } else if sh.len() == 2 {
                    wide.push(n)
                } else if sh.first() != Some(&b) {
                    inv.push(n)
                } else {
                    narrow.push(n)
                }
            }
        } else {
            let (mut op, on_wide) = reds[k - 19].clone();
            if let Op::SumTo { shape } = &mut op {
                *shape = vec![Dim::Known(cols)];
            }
            let src = if on_wide {
                wide[a % wide.len()]
            } else {
                narrow[a % narrow.len()]
            };
            let Ok(n) = body.add(op, &[src]) else {
                continue;
            };
            let sh = body.ty(n).shape.clone();
            if sh.first() == Some(&b) {
                if sh.len() == 2 {
                    wide.push(n)
                } else {
                    narrow.push(n)
                }
            } else {
                inv.push(n);
            }
        }
    }
    let mut outs: Vec<NodeId> = vec![
        *wide.last().unwrap(),
        *narrow.last().unwrap(),
        *inv.last().unwrap(),
    ];
    outs.dedup();
    for (j, o) in outs.iter().enumerate() {
        body.set_output(format!("out{j}"), *o);
    }
    let g = wrap(body, KernelKind::Reduce);
    let mut env = Env::new(seed, 2);
    env.values.insert("x0".into(), values(&[rows, cols], seed));
    env.values.insert("x1".into(), values(&[cols], seed + 1));
    env.values.insert("x2".into(), values(&[rows], seed + 2));
    env.values.insert(
        "x3".into(),
        ArrayD::from_shape_fn(IxDyn(&[rows]), |i| {
            ((i[0] * 7 + seed as usize) % cols) as f32
        }),
    );
    (g, env)
}

/// Reductions for random row-kernel bodies: (op, applies to a `[B, C]` value (else `[B]`)).
fn reductions() -> Vec<(Op, bool)> {
    let c = Dim::Known(0); // replaced by the column count
    let sum = |axes: &[usize], keep| Op::Sum {
        axes: axes.to_vec(),
        keep,
    };
    let mean = |axes: &[usize], keep| Op::Mean {
        axes: axes.to_vec(),
        keep,
    };
    let max = |axes: &[usize], keep| Op::Max {
        axes: axes.to_vec(),
        keep,
    };
    vec![
        (sum(&[1], true), true),
        (mean(&[1], true), true),
        (max(&[1], true), true),
        (Op::Softmax { axis: 1 }, true),
        (Op::LogSoftmax { axis: 1 }, true),
        (sum(&[0], false), true),
        (mean(&[0], true), true),
        (max(&[0], false), true),
        (Op::SumTo { shape: vec![c] }, true),
        (sum(&[0], false), false),
        (mean(&[0], false), false),
        (sum(&[1], false), true),
        // Over both axes: per row, then across the rows.
        (sum(&[0, 1], false), true),
        (mean(&[0, 1], true), true),
        (max(&[0, 1], false), true),
    ]
}

proptest! {
    #![proptest_config(replaying(64))]

    /// A random body of elementwise ops and reductions along, across and over the rows of
    /// `[B, C]` values (softmax, row sums and maxima, batch sums and means, `sum_to`, sums,
    /// means and maxima of everything) runs as one native row kernel and matches the
    /// interpreter, for any B and C (1 included), also on values the same in every row.
    #[test]
    fn row_kernels_match_the_interpreter(rows in 1usize..9, cols in 1usize..19, picks in prop::collection::vec((0usize..34, 0usize..16, 0usize..16), 1..14), seed in 0u64..100) {
        let (g, env) = random_row_kernel(rows, cols, &picks, seed);
        compare(&g, &env, 2).map_err(TestCaseError::fail)?;
        let mut jit = JitGraph::new(g.clone(), 1).map_err(TestCaseError::fail)?;
        let syms: HashMap<String, usize> = [("B".to_string(), rows)].into_iter().collect();
        let lines = jit.plan_all(&syms).map_err(TestCaseError::fail)?;
        prop_assert_eq!(jit.native_kernels().0, 1, "{:?}", lines);
    }
}

/// The plan names the GEMM core the cost table picks for the product's shape, and both
/// cores give the interpreter's values.
#[test]
fn plans_name_the_gemm_core() {
    for (m, k, n) in [(8usize, 10usize, 10usize), (64, 64, 128)] {
        let mut body = Graph::new();
        let a = body.add_ok(
            Op::Input {
                name: "in0".into(),
                ty: (DType::F32, shape_of(&[m, k])),
            },
            &[],
        );
        let b = body.add_ok(
            Op::Input {
                name: "in1".into(),
                ty: (DType::F32, shape_of(&[k, n])),
            },
            &[],
        );
        let mm = body.add_ok(Op::matmul(), &[a, b]);
        body.set_output("out0", mm);
        let g = wrap(body, KernelKind::MatMul);
        let want = match dlc_compiler::jit::sgemm::choose(m, n, k) {
            dlc_compiler::jit::sgemm::GemmPath::Jit => "the JIT's F32X4 micro-kernel",
            dlc_compiler::jit::sgemm::GemmPath::Crate => "the gemm crate",
        };
        let mut j = JitGraph::new(g.clone(), 1).expect("jit");
        let lines = j.plan_all(&HashMap::new()).expect("plans");
        assert!(lines[0].contains(want), "{lines:?}");
        let mut env = Env::new(0, 0);
        env.values.insert("x0".into(), values(&[m, k], 1));
        env.values.insert("x1".into(), values(&[k, n], 2));
        compare(&g, &env, 1).expect("same values");
    }
    assert_eq!(
        dlc_compiler::jit::sgemm::choose(8, 10, 10),
        dlc_compiler::jit::sgemm::GemmPath::Jit,
        "the committed table picks the JIT core for 8×10×10"
    );
}

/// A kernel of one window op (convolution, pooling or a gradient) at random sizes, with
/// an elementwise epilogue (`x + 1` then ReLU, or the product with a mask input) or
/// none, against the interpreter; `threads` 2 splits the images when the work is large.
fn window_case(
    which: usize,
    [b, h, w, c, f]: [usize; 5],
    geo: dlc_compiler::window::Geometry,
    epilogue: bool,
    threads: usize,
) -> Result<(), String> {
    use dlc_compiler::types::Type;
    let [oh, ow] = geo.out_size(h, w).ok_or("does not fit")?;
    let (x, y, k) = (
        [b, h, w, c],
        [b, oh, ow, f],
        [geo.size[0], geo.size[1], c, f],
    );
    let (pool_x, pool_y) = ([b, h, w, c], [b, oh, ow, c]);
    let (op, ins): (Op, Vec<[usize; 4]>) = match which {
        0 => (Op::Conv2d { geo }, vec![x, k]),
        1 => (Op::Conv2dBackInput { geo, input: [h, w] }, vec![y, k]),
        2 => (Op::Conv2dBackFilter { geo }, vec![x, y]),
        3 => (Op::MaxPool2d { geo }, vec![pool_x]),
        4 => (Op::MaxPool2dBack { geo }, vec![pool_x, pool_y]),
        5 => (Op::AvgPool2d { geo }, vec![pool_x]),
        _ => (Op::AvgPool2dBack { geo, input: [h, w] }, vec![pool_y]),
    };
    let mut body = Graph::new();
    let leaves: Vec<NodeId> = ins
        .iter()
        .enumerate()
        .map(|(i, s)| {
            body.add_ok(
                Op::Input {
                    name: format!("in{i}"),
                    ty: (DType::F32, shape_of(s)),
                },
                &[],
            )
        })
        .collect();
    let core = body.add_ok(op, &leaves);
    let out = if epilogue {
        let Type { shape, .. } = body.ty(core).clone();
        let mask = body.add_ok(
            Op::Input {
                name: format!("in{}", ins.len()),
                ty: (DType::F32, shape),
            },
            &[],
        );
        let one = body.add_ok(Op::scalar(1.0), &[]);
        let s = body.add_ok(Op::Add, &[core, one]);
        let r = body.add_ok(Op::Relu, &[s]);
        let z = body.add_ok(Op::Gt, &[mask, one]);
        body.add_ok(Op::Mul, &[r, z])
    } else {
        core
    };
    body.set_output("out0", out);
    let g = wrap(body, KernelKind::Window);
    let mut env = Env::new(0, 0);
    for (i, s) in ins.iter().enumerate() {
        // Max pooling sees whole numbers: many ties, where the first maximum must win.
        let v = values(s, i as u64 + 1);
        let v = if matches!(which, 3 | 4) && i == 0 {
            v.mapv(f32::round)
        } else {
            v
        };
        env.values.insert(format!("x{i}"), v);
    }
    if epilogue {
        let shape = g.ty(g.output("r0").expect("r0")).shape.clone();
        let dims: Vec<usize> = shape.iter().map(|d| d.known().expect("known")).collect();
        env.values
            .insert(format!("x{}", ins.len()), values(&dims, 9));
    }
    compare_within(&g, &env, threads, 1e-4)
}

fn window_geometry(
    size: [usize; 2],
    stride: [usize; 2],
    same: bool,
    h: usize,
    w: usize,
) -> dlc_compiler::window::Geometry {
    use dlc_compiler::window::{Geometry, same_padding};
    let (t, b) = same_padding(h, size[0], stride[0]);
    let (l, r) = same_padding(w, size[1], stride[1]);
    Geometry {
        size,
        stride,
        pad: if same { [t, b, l, r] } else { [0; 4] },
    }
}

proptest! {
    #![proptest_config(replaying(200))]

    /// Every window kernel (and its epilogue) equals the interpreter: random sizes,
    /// kernels, strides, "same" padding for convolutions, overlapping pooling windows,
    /// ties between pooling candidates (the values repeat), 1 and 2 threads.
    #[test]
    fn window_kernels_match_the_interpreter(which in 0usize..7, b in 1usize..4, h in 1usize..9, w in 1usize..9, c in 1usize..6, f in 1usize..6,
                                            kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..3, same: bool, epilogue: bool, threads in 1usize..3) {
        let geo = window_geometry([kh, kw], [sh, sw], same && which < 3, h, w);
        prop_assume!(geo.out_size(h, w).is_some());
        window_case(which, [b, h, w, c, f], geo, epilogue, threads).map_err(TestCaseError::fail)?;
    }
}

/// Window kernels large enough to split across threads give the same bits on 1 and 2
/// threads (images split per thread; the filter gradient's fixed chunks).
#[test]
fn split_window_kernels_are_deterministic() {
    let geo = window_geometry([3, 3], [1, 1], true, 12, 12);
    for which in 0..7 {
        // Pooling windows are not padded.
        let g = if which < 3 {
            geo
        } else {
            window_geometry([3, 3], [1, 1], false, 12, 12)
        };
        window_case(which, [9, 12, 12, 16, 24], g, which != 2, 2).expect("matches");
        let run = |threads: usize| {
            let mut body = Graph::new();
            let x = body.add_ok(
                Op::Input {
                    name: "in0".into(),
                    ty: (DType::F32, shape_of(&[9, 12, 12, 16])),
                },
                &[],
            );
            let gy = body.add_ok(
                Op::Input {
                    name: "in1".into(),
                    ty: (DType::F32, shape_of(&[9, 12, 12, 24])),
                },
                &[],
            );
            let dw = body.add_ok(Op::Conv2dBackFilter { geo }, &[x, gy]);
            body.set_output("out0", dw);
            let g = wrap(body, KernelKind::Window);
            let mut env = Env::new(0, 0);
            env.values.insert("x0".into(), values(&[9, 12, 12, 16], 1));
            env.values.insert("x1".into(), values(&[9, 12, 12, 24], 2));
            JitGraph::new(g, threads)
                .expect("jit")
                .run(&env, &["r0"])
                .expect("runs")
                .remove(0)
        };
        let (one, two) = (run(1), run(2));
        assert!(
            one.iter()
                .zip(two.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "filter gradient differs between 1 and 2 threads"
        );
    }
}

/// A data-movement kernel (one op, as the fusion pass makes them) on inputs of these
/// shapes, against the interpreter; integer inputs are indices below `rows`.
fn copy_case(op: Op, shapes: &[(Vec<usize>, DType)], rows: usize) -> Result<(), String> {
    let mut body = Graph::new();
    let leaves: Vec<NodeId> = shapes
        .iter()
        .enumerate()
        .map(|(i, (s, dt))| {
            body.add_ok(
                Op::Input {
                    name: format!("in{i}"),
                    ty: (*dt, shape_of(s)),
                },
                &[],
            )
        })
        .collect();
    let out = body.add(op, &leaves)?;
    body.set_output("out0", out);
    let g = wrap(body, KernelKind::Copy);
    let mut env = Env::new(0, 0);
    for (i, (s, dt)) in shapes.iter().enumerate() {
        let v = values(s, i as u64 + 1);
        let v = if *dt == DType::I32 {
            v.mapv(|x| ((x + 2.0) * 250.0).round() % rows as f32)
        } else {
            v
        };
        env.values.insert(format!("x{i}"), v);
    }
    let mut jit = JitGraph::new(g.clone(), 1)?;
    jit.plan_all(&HashMap::new())?;
    if jit.interpreted_kernels(&HashMap::new())? != 0 {
        return Err("the copy kernel is not native".into());
    }
    compare(&g, &env, 1)
}

proptest! {
    #![proptest_config(replaying(100))]

    /// Transpose, slice (with steps), concat, gather and scatter-add run natively and
    /// equal the interpreter.
    #[test]
    fn copy_kernels_match_the_interpreter(which in 0usize..5, a in 1usize..5, b in 1usize..6, c in 1usize..4, start in 0usize..3, step in 1usize..3, rot in 0usize..6) {
        const F: DType = DType::F32;
        let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let r = match which {
            0 => copy_case(Op::Transpose { perm: perms[rot].to_vec() }, &[(vec![a, b, c], F)], 1),
            1 => {
                let start = start.min(b - 1);
                copy_case(Op::Slice { axis: 1, start, end: b, step }, &[(vec![a, b, c], F)], 1)
            }
            2 => copy_case(Op::Concat { axis: rot % 3 }, &[(vec![a, b, c], F), (vec![a, b, c], F), (vec![a, b, c], F)], 1),
            3 => copy_case(Op::Gather, &[(vec![a, c], F), (vec![b, 2], DType::I32)], a),
            _ => copy_case(Op::ScatterAdd { rows: a }, &[(vec![b, 2], DType::I32), (vec![b, 2, c], F)], a),
        };
        r.map_err(TestCaseError::fail)?;
    }
}

/// A gather index out of range is an error naming it, not a crash.
#[test]
fn native_gather_rejects_bad_indices() {
    let mut body = Graph::new();
    let t = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, shape_of(&[2, 3])),
        },
        &[],
    );
    let i = body.add_ok(
        Op::Input {
            name: "in1".into(),
            ty: (DType::I32, shape_of(&[2])),
        },
        &[],
    );
    let o = body.add_ok(Op::Gather, &[t, i]);
    body.set_output("out0", o);
    let g = wrap(body, KernelKind::Copy);
    let mut env = Env::new(0, 0);
    env.values.insert("x0".into(), values(&[2, 3], 1));
    env.values.insert(
        "x1".into(),
        ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.0, 5.0]).expect("shape"),
    );
    let err = JitGraph::new(g, 1)
        .expect("jit")
        .run(&env, &["r0"])
        .expect_err("index 5 of 2 rows");
    assert!(err.contains("gather index 5"), "{err}");
}

/// i32 division rounds toward zero on the JIT as in the interpreter (by an i32 tensor and
/// by a scalar, whose reciprocal the loops would otherwise multiply by).
#[test]
fn integer_division_rounds_toward_zero() {
    for by_scalar in [false, true] {
        let mut body = Graph::new();
        let a = body.add_ok(
            Op::Input {
                name: "in0".into(),
                ty: (DType::I32, shape_of(&[6])),
            },
            &[],
        );
        let d = if by_scalar {
            body.add_ok(
                Op::Input {
                    name: "in1".into(),
                    ty: (DType::I32, shape_of(&[])),
                },
                &[],
            )
        } else {
            body.add_ok(
                Op::Input {
                    name: "in1".into(),
                    ty: (DType::I32, shape_of(&[6])),
                },
                &[],
            )
        };
        let q = body.add_ok(Op::Div, &[a, d]);
        body.set_output("out0", q);
        let g = wrap(body, KernelKind::Loop);
        let mut env = Env::new(0, 0);
        env.values.insert(
            "x0".into(),
            ArrayD::from_shape_vec(IxDyn(&[6]), vec![-3.0, 3.0, 7.0, -7.0, 1.0, 0.0])
                .expect("shape"),
        );
        let divisor = if by_scalar {
            ArrayD::from_shape_vec(IxDyn(&[]), vec![2.0]).expect("shape")
        } else {
            ArrayD::from_shape_vec(IxDyn(&[6]), vec![2.0, 2.0, -2.0, 2.0, 3.0, 5.0]).expect("shape")
        };
        env.values.insert("x1".into(), divisor);
        let got = JitGraph::new(g.clone(), 1)
            .expect("jit")
            .run(&env, &["r0"])
            .expect("runs")
            .remove(0);
        let want = interp::run(&g, &env, &["r0"]).expect("runs").remove(0);
        assert_eq!(got, want, "by a scalar: {by_scalar}");
        assert_eq!(got[0], -1.0);
    }
}
