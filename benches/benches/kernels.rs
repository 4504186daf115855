//! JIT kernels: gemm at 512³ (GFLOP/s), both GEMM paths of `sgemm::matmul` at 512³ (GFLOP/s,
//! with their fractions of the core's FMA peaks printed first) and a fused elementwise update
//! loop (GB/s). Whole training steps are in `train_step.rs`.
//! Run: `cargo bench -p dlc-benches --bench kernels`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dlc_benches::gemm::{Operands, Peaks, min_ns};
use dlc_compiler::interp::Env;
use dlc_compiler::ir::Graph;
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::jit::sgemm::GemmPath;
use dlc_compiler::ops::{KernelKind, Op};
use dlc_compiler::types::{DType, shape_of};
use ndarray::{ArrayD, IxDyn};
use std::hint::black_box;
use std::time::Duration;

/// One fused kernel of `kind` around `body` (inputs `in0…` become graph inputs `x0…`).
fn kernel_graph(body: Graph, inputs: &[Vec<usize>], kind: KernelKind) -> Graph {
    let mut g = Graph::new();
    let ins: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            g.add_ok(
                Op::Input {
                    name: format!("x{i}"),
                    ty: (DType::F32, shape_of(s)),
                },
                &[],
            )
        })
        .collect();
    let outs = body.outputs.clone();
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
            &ins,
        );
        g.set_output(format!("r{j}"), n);
    }
    g
}

fn env(inputs: &[Vec<usize>]) -> Env<f32> {
    let mut e = Env::new(0, 1);
    for (i, s) in inputs.iter().enumerate() {
        let n: usize = s.iter().product();
        e.values.insert(
            format!("x{i}"),
            ArrayD::from_shape_vec(IxDyn(s), (0..n).map(|k| (k % 97) as f32 * 0.01).collect())
                .expect("shape"),
        );
    }
    e
}

fn gemm_512(c: &mut Criterion) {
    let n = 512;
    let mut body = Graph::new();
    let a = body.add_ok(
        Op::Input {
            name: "in0".into(),
            ty: (DType::F32, shape_of(&[n, n])),
        },
        &[],
    );
    let b = body.add_ok(
        Op::Input {
            name: "in1".into(),
            ty: (DType::F32, shape_of(&[n, n])),
        },
        &[],
    );
    let mm = body.add_ok(
        Op::MatMul {
            ta: false,
            tb: false,
        },
        &[a, b],
    );
    body.set_output("out0", mm);
    let inputs = vec![vec![n, n], vec![n, n]];
    let mut jit = JitGraph::new(kernel_graph(body, &inputs, KernelKind::MatMul), 1).expect("jit");
    let e = env(&inputs);
    let mut group = c.benchmark_group("gemm");
    group.throughput(Throughput::Elements((2 * n * n * n) as u64));
    group.bench_function("512x512x512_1thread_flops", |bch| {
        bch.iter(|| black_box(jit.run(&e, &["r0"]).expect("runs")))
    });
    group.finish();
}

/// C = A·B at 512³ on one thread through each GEMM path. Criterion reports the rate in
/// elements/s, one element per flop (2·512³ per product); the fractions of the FMA peaks
/// (clock and FMA throughput measured here) are printed before it, from the fastest of 20
/// runs.
fn gemm_paths(c: &mut Criterion) {
    let n = 512;
    let mut o = Operands::new(n, n, n);
    let peaks = Peaks::measure();
    if let Some(p) = &peaks {
        eprintln!("{p}");
    }
    let mut group = c.benchmark_group("gemm_path");
    group.throughput(Throughput::Elements(o.flops() as u64));
    for path in [GemmPath::Jit, GemmPath::Crate] {
        if let Some(p) = &peaks {
            let gf = o.flops() / min_ns(|| o.run(path), 20, 20, Duration::ZERO);
            eprintln!("{path} 512³: {gf:.1} GFLOP/s, {}", p.fractions(gf));
        }
        group.bench_function(format!("{path}_512x512x512_1thread_flops"), |bch| {
            bch.iter(|| o.run(path))
        });
    }
    group.finish();
}

fn adam_loop(c: &mut Criterion) {
    // p, g, m, v → p', m', v' for a million parameters: the shape of the update kernel.
    let n = 1 << 20;
    let mut body = Graph::new();
    let ins: Vec<_> = (0..4)
        .map(|i| {
            body.add_ok(
                Op::Input {
                    name: format!("in{i}"),
                    ty: (DType::F32, shape_of(&[n])),
                },
                &[],
            )
        })
        .collect();
    let (p, g, m, v) = (ins[0], ins[1], ins[2], ins[3]);
    let k = |b: &mut Graph, x: f64| b.scalar(x);
    let (b1, b1c, b2, b2c, lr, eps) = (
        k(&mut body, 0.9),
        k(&mut body, 0.1),
        k(&mut body, 0.999),
        k(&mut body, 0.001),
        k(&mut body, 1e-3),
        k(&mut body, 1e-7),
    );
    let m1 = body.add_ok(Op::Mul, &[b1, m]);
    let m2 = body.add_ok(Op::Mul, &[b1c, g]);
    let mn = body.add_ok(Op::Add, &[m1, m2]);
    let gg = body.add_ok(Op::Mul, &[g, g]);
    let v1 = body.add_ok(Op::Mul, &[b2, v]);
    let v2 = body.add_ok(Op::Mul, &[b2c, gg]);
    let vn = body.add_ok(Op::Add, &[v1, v2]);
    let sv = body.add_ok(Op::Sqrt, &[vn]);
    let den = body.add_ok(Op::Add, &[sv, eps]);
    let r = body.add_ok(Op::Div, &[mn, den]);
    let d = body.add_ok(Op::Mul, &[lr, r]);
    let pn = body.add_ok(Op::Sub, &[p, d]);
    body.set_output("out0", pn);
    body.set_output("out1", mn);
    body.set_output("out2", vn);
    let inputs = vec![vec![n]; 4];
    let mut jit = JitGraph::new(kernel_graph(body, &inputs, KernelKind::Update), 1).expect("jit");
    let e = env(&inputs);
    let mut group = c.benchmark_group("loop");
    // 4 arrays read, 3 written.
    group.throughput(Throughput::Bytes((7 * 4 * n) as u64));
    group.bench_function("adam_update_1M_params", |bch| {
        bch.iter(|| black_box(jit.run(&e, &["r0", "r1", "r2"]).expect("runs")))
    });
    group.finish();
}

criterion_group!(benches, gemm_512, gemm_paths, adam_loop);
criterion_main!(benches);
