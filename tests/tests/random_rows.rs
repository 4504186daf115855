//! Random draws over the batch keyed by the global row (`Env::row_offset`): a batch that is
//! rows [k, k + n) of a larger one draws exactly those rows' numbers, on the interpreter and
//! on the JIT, so data-parallel ranks draw the dropout masks one process draws.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::Graph;
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::ops::{Dist, Op};
use dlc_compiler::types::{DType, Dim};
use ndarray::{ArrayD, IxDyn, s};

/// out = x + uniform[B, 3] + normal[B, 3] · 0 (both kinds of draw) and a draw of fixed
/// shape [3], which does not depend on the rows.
fn graph() -> Graph {
    let mut g = Graph::new();
    let b = || Dim::Sym("B".into());
    let x = g.add_ok(
        Op::Input {
            name: "x".into(),
            ty: (DType::F32, vec![b(), Dim::Known(3)]),
        },
        &[],
    );
    let u = g.add_ok(
        Op::Random {
            key: 1,
            dist: Dist::Uniform,
            shape: vec![b(), Dim::Known(3)],
        },
        &[],
    );
    let n = g.add_ok(
        Op::Random {
            key: 2,
            dist: Dist::Normal,
            shape: vec![b(), Dim::Known(3)],
        },
        &[],
    );
    let fixed = g.add_ok(
        Op::Random {
            key: 3,
            dist: Dist::Uniform,
            shape: vec![Dim::Known(3)],
        },
        &[],
    );
    let a = g.add_ok(Op::Add, &[x, u]);
    let m = g.add_ok(Op::Mul, &[n, fixed]);
    let out = g.add_ok(Op::Add, &[a, m]);
    g.set_output("out", out);
    g
}

fn env(rows: usize, offset: u64) -> Env<f32> {
    let mut e = Env::new(7, 11);
    e.row_offset = offset;
    e.values
        .insert("x".into(), ArrayD::zeros(IxDyn(&[rows, 3])));
    e
}

#[test]
fn a_slice_of_the_batch_draws_its_rows_numbers() {
    let g = graph();
    let whole = run(&g, &env(6, 0), &["out"]).unwrap().remove(0);
    // The JIT on the graph as it is and fused into one native loop.
    let fused = dlc_compiler::opt::optimize(&g).graph;
    let mut jits = [
        JitGraph::new(g.clone(), 1).unwrap(),
        JitGraph::new(fused, 2).unwrap(),
    ];
    for jit in &mut jits {
        assert_eq!(jit.run(&env(6, 0), &["out"]).unwrap()[0], whole);
        assert_eq!(
            jit.native_kernels().0,
            jit.native_kernels().1,
            "every kernel native"
        );
    }
    for (k, n) in [(0, 2), (2, 3), (5, 1)] {
        let want = whole.slice(s![k..k + n, ..]).to_owned().into_dyn();
        let part = run(&g, &env(n, k as u64), &["out"]).unwrap().remove(0);
        assert_eq!(part, want, "interpreter, rows {k}..{}", k + n);
        for jit in &mut jits {
            let part = jit.run(&env(n, k as u64), &["out"]).unwrap().remove(0);
            assert_eq!(part, want, "JIT, rows {k}..{}", k + n);
        }
    }
}
