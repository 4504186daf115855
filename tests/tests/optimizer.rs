//! The optimizer changes how a training step is computed, never what it computes: for
//! every model, the optimized graph (simplified and fused) gives the same outputs as the
//! unoptimized one on random inputs, parameters and optimizer state (f64, reference
//! interpreter). Also: a 30-layer dense net optimizes within its budgets.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::Graph;
use dlc_compiler::lower::Mode;
use dlc_compiler::ops::Op;
use dlc_compiler::opt::{fuse::kernel_count, optimize};
use dlc_compiler::print::print_graph;
use dlc_compiler::train::training_graph;
use dlc_compiler::types::{DType, Dim};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

/// The graph a model's training step (or, without a training section, `forward`) runs.
fn step_graph(path: &std::path::Path) -> Graph {
    // As `dlc` reads it: with the files it imports.
    let prog = dlc_runtime::session::load_program(path).unwrap_or_else(|e| panic!("{e}"));
    match prog.train_def() {
        None => {
            prog.lower_predict(&[], Mode::Eval)
                .unwrap_or_else(|_| panic!("lowers"))
                .graph
        }
        Some(_) => {
            let sig = dlc_tests::signature(&prog);
            let (l, cfg) = prog
                .lower_training(&sig, Mode::Train)
                .unwrap_or_else(|_| panic!("lowers"));
            training_graph(&l, &cfg.optimizer, cfg.clip_norm)
                .expect("differentiates")
                .graph
        }
    }
}

/// Random values for every leaf: labels as integers, second moments non-negative.
/// [`random_env`] in f32, for the JIT.
fn random_env_f32(g: &Graph, seed: u64, batch: usize) -> Env<f32> {
    let e64 = random_env(g, seed, batch);
    let mut env = Env::new(e64.seed, e64.step);
    for (k, v) in &e64.values {
        env.values.insert(k.clone(), v.mapv(|x| x as f32));
    }
    env
}

fn random_env(g: &Graph, seed: u64, batch: usize) -> Env<f64> {
    let mut env = Env::new(seed, 3);
    let mut k = seed as f64 * 0.618;
    for (name, n) in
        g.leaves(|op| matches!(op, Op::Input { .. } | Op::Param { .. } | Op::State { .. }))
    {
        let ty = g.ty(n);
        let mut shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| if let Dim::Known(v) = d { *v } else { batch })
            .collect();
        // A graph's sparse matrix (CSR over `batch` rows): one entry per row, in column
        // (3 + 7r) mod batch.
        if name.ends_with(".indptr") {
            shape = vec![batch + 1];
            let v: Vec<f64> = (0..=batch).map(|r| r as f64).collect();
            env.values.insert(
                name,
                ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape"),
            );
            continue;
        }
        if name.ends_with(".indices") {
            let v: Vec<f64> = (0..batch).map(|r| ((3 + 7 * r) % batch) as f64).collect();
            env.values.insert(
                name,
                ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape"),
            );
            continue;
        }
        let len: usize = shape.iter().product();
        // Weight matrices at Glorot's scale, as a model starts: at a fixed ±0.3, a tanh
        // RNN of 512 units has recurrent gain ≈ 4 and is chaotic over 100 steps, so two
        // correct f32 evaluations (different summation orders) part ways.
        let glorot = match (&g.g[n].op, &ty.shape[..]) {
            (Op::Param { .. }, [Dim::Known(a), Dim::Known(b)]) => {
                (6.0 / (a + b) as f64).sqrt() / 0.3
            }
            _ => 1.0,
        };
        let vals: Vec<f64> = (0..len)
            .map(|i| {
                k += 0.7548776662;
                let u = (k + i as f64 * 0.5698402910).fract();
                if ty.dtype == DType::I32 {
                    (u * 2.0).floor()
                } else if name == "step" {
                    3.0
                } else if name.contains(".v.") || name.contains("accum") || name.contains(".ms.") {
                    u * 0.01
                } else {
                    (u - 0.5) * 0.6 * glorot.min(1.0)
                }
            })
            .collect();
        env.values.insert(
            name,
            ArrayD::from_shape_vec(IxDyn(&shape), vals).expect("shape"),
        );
    }
    env
}

fn assert_same(a: &Graph, b: &Graph, seed: u64, what: &str) {
    let env = random_env(a, seed, 5);
    let names: Vec<&str> = a.outputs.iter().map(|(n, _)| n.as_str()).collect();
    let va = run(a, &env, &names).expect("unoptimized runs");
    let vb = run(b, &env, &names).expect("optimized runs");
    for ((name, x), y) in names.iter().zip(&va).zip(&vb) {
        assert_eq!(x.shape(), y.shape(), "{what}: output {name}");
        for (p, q) in x.iter().zip(y.iter()) {
            assert!(
                (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                "{what}: output {name}: {p} vs {q}\n{}",
                print_graph(b)
            );
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
    #![proptest_config(replaying(6))]

    #[test]
    fn every_model_optimizes_to_the_same_values(seed in 0u64..1000) {
        for path in dlc_tests::model_files() {
            let g = step_graph(&path);
            let o = optimize(&g);
            prop_assert!(o.reports.iter().all(|r| r.fallback.is_none()), "{}: a phase fell back", path.display());
            o.graph.verify().map_err(TestCaseError::fail)?;
            prop_assert!(o.kernels < kernel_count(&g) || kernel_count(&g) <= 1, "{}: no fewer kernels", path.display());
            assert_same(&g, &o.graph, seed, &path.display().to_string());
        }
    }
}

/// A dense net ten times the MLP's size (30 layers) optimizes, saturating, and computes
/// the same values.
#[test]
fn deep_net_optimizes_within_budget() {
    let layers = 30;
    let mut src = String::from(
        "model Deep(height, width, classes, hidden: 32) {\n  first = Dense(height * width, hidden, activation: relu)\n",
    );
    for i in 0..layers - 2 {
        src += &format!("  h{i} = Dense(hidden, hidden, activation: tanh)\n");
    }
    src += "  last = Dense(hidden, classes)\n  fn forward(x: f32[B, height, width]) -> f32[B, classes] {\n    let a = first(flatten(x))\n";
    let mut prev = "a".to_string();
    for i in 0..layers - 2 {
        src += &format!("    let a{i} = h{i}({prev})\n");
        prev = format!("a{i}");
    }
    src += &format!(
        "    last({prev})\n  }}\n}}\ntrain Deep on digits {{ loss = softmax_cross_entropy(forward(x), y) }}\n"
    );
    let dir = std::env::temp_dir().join(format!("dlc-deep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("deep.dl");
    std::fs::write(&p, src).expect("write");
    let g = step_graph(&p);
    let mlp = step_graph(&dlc_tests::root().join("models/mlp.dl"));
    assert!(
        g.schedule().len() >= 10 * mlp.schedule().len(),
        "{} vs {}",
        g.schedule().len(),
        mlp.schedule().len()
    );
    let o = optimize(&g);
    for r in &o.reports {
        assert!(r.fallback.is_none(), "{}", r.render());
        assert!(
            r.stop_reason == "saturated" || r.stop_reason == "done",
            "{}",
            r.render()
        );
    }
    assert!(o.kernels < kernel_count(&g) / 5, "{} kernels", o.kernels);
    assert_same(&g, &o.graph, 1, "deep");
}

/// Every model's optimized step on the JIT (native loops, gemm, staged reductions) gives
/// the interpreter's values, in f32.
#[test]
fn every_model_runs_the_same_on_the_jit() {
    for path in dlc_tests::model_files() {
        let g = optimize(&step_graph(&path)).graph;
        for batch in [1usize, 5, 64] {
            let env = random_env_f32(&g, 7, batch);
            let names: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
            let want = run(&g, &env, &names).expect("interpreter");
            let got = dlc_compiler::jit::exec::JitGraph::new(g.clone(), 2)
                .expect("jit")
                .run(&env, &names)
                .expect("jit runs");
            for ((name, w), j) in names.iter().zip(&want).zip(&got) {
                assert_eq!(w.shape(), j.shape(), "{}: {name}", path.display());
                for (a, b) in w.iter().zip(j.iter()) {
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                        "{}: {name} at batch {batch}: {a} vs {b}",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Donating the parameters and optimizer states to the step (as the trainer does) gives
/// the same bits as a plain run, and the update writes over the donated buffers: every
/// `new:` output of every model comes back in its leaf's own buffer.
#[test]
fn updates_run_in_place_with_the_same_values() {
    let mut trained = 0;
    for path in dlc_tests::model_files() {
        let g = optimize(&step_graph(&path)).graph;
        let mut env = random_env_f32(&g, 3, 8);
        let names: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
        let donate: Vec<(&str, &str)> = names
            .iter()
            .filter_map(|n| Some((*n, n.strip_prefix("new:")?)))
            .collect();
        if donate.is_empty() {
            continue; // a model without a training step
        }
        trained += 1;
        let mut jit = dlc_compiler::jit::exec::JitGraph::new(g.clone(), 1).expect("jit");
        let want = jit.run(&env, &names).expect("jit runs");
        let ptrs: Vec<*const f32> = donate
            .iter()
            .map(|(_, l)| env.values[*l].as_ptr())
            .collect();
        let got = jit
            .run_donating(&mut env, &names, &donate)
            .expect("jit runs donating");
        for ((name, w), j) in names.iter().zip(&want).zip(&got) {
            assert_eq!(w, j, "{}: {name}", path.display());
        }
        for ((out, leaf), p) in donate.iter().zip(ptrs) {
            let k = names.iter().position(|n| n == out).expect("requested");
            assert_eq!(
                got[k].as_ptr(),
                p,
                "{}: {out} not written over {leaf}",
                path.display()
            );
            assert!(!env.values.contains_key(*leaf), "{leaf} still in the env");
        }
    }
    assert!(trained >= 4, "{trained} models with a training step");
}

/// Steps run the way the trainer runs them (parameters and states donated and moved back,
/// the outputs it is done with recycled) allocate no tensor buffer once every kernel has
/// run: intermediates live in the arena, updates are in place, the rest is pooled.
#[test]
fn training_steps_allocate_no_buffers_after_the_first() {
    let g = optimize(&step_graph(&dlc_tests::root().join("models/mlp.dl"))).graph;
    let mut env = random_env_f32(&g, 5, 64);
    let names: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
    let donate: Vec<(&str, &str)> = names
        .iter()
        .filter_map(|n| Some((*n, n.strip_prefix("new:")?)))
        .collect();
    let mut jit = dlc_compiler::jit::exec::JitGraph::new(g.clone(), 2).expect("jit");
    let mut after = Vec::new();
    for _ in 0..4 {
        let outs = jit
            .run_donating(&mut env, &names, &donate)
            .expect("step runs");
        for (name, v) in names.iter().zip(outs) {
            match name.strip_prefix("new:") {
                Some(leaf) => {
                    env.values.insert(leaf.to_string(), v);
                }
                None => jit.recycle(v),
            }
        }
        after.push(jit.buffers_allocated());
    }
    assert!(after[0] > 0, "the first step takes its buffers: {after:?}");
    assert_eq!(after[1], after[3], "later steps allocate: {after:?}");
}
