//! Data-parallel training splits a step in two: the gradients (each process on its rows),
//! then, once they are averaged, the optimizer update. The two halves give what the fused
//! step gives, for every optimizer, with and without clipping.

use dlc_compiler::interp::{Env, Observer, run};
use dlc_compiler::jit::exec::JitGraph;
use dlc_compiler::lower::{Lowered, Mode, Optimizer, Program};
use dlc_compiler::train::{training_graph, update_graph};
use ndarray::{ArrayD, IxDyn};

const NET: &str = "model Net {
  d1 = Dense(4, 8, activation: tanh)
  d2 = Dense(8, 1)
  fn forward(x: f32[B, 4]) -> f32[B, 1] { d2(d1(x)) }
}
train Net on toy { loss = mse(forward(x), y) }
";

/// NET lowered for training on x f32[B, 4].
fn net() -> Lowered {
    let prog = Program::parse("net.dl", NET.as_bytes()).unwrap_or_else(|_| panic!("parses"));
    let (l, _) = prog
        .lower_training(&dlc_tests::toy_signature(4), Mode::Train)
        .unwrap_or_else(|d| panic!("{d:?}"));
    l
}

fn array(shape: &[usize], salt: usize, lo: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|j| lo + (((j * 7 + salt * 13) as f64) * 0.37).sin().abs() * 0.5)
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

#[test]
fn gradients_then_update_equal_the_fused_step() {
    let l = net();
    for name in Optimizer::NAMES {
        let opt = Optimizer::with_defaults(name, None).expect("an optimizer");
        for clip in [None, Some(0.05)] {
            let tg = training_graph(&l, &opt, clip).expect("a training graph");
            let mut env: Env<f64> = Env::new(1, 2);
            for (i, p) in tg.params.iter().enumerate() {
                env.values.insert(p.name.clone(), array(&p.shape, i, -0.25));
            }
            for (i, s) in tg.states.iter().enumerate() {
                env.values
                    .insert(s.name.clone(), array(&s.shape, i + 50, 0.01));
            }
            env.values
                .insert("step".into(), ArrayD::from_elem(IxDyn(&[]), 3.0));
            env.values.insert("x".into(), array(&[5, 4], 99, -0.5));
            env.values.insert("y".into(), array(&[5, 1], 98, 0.0));
            let mut outs: Vec<String> = vec!["grad_sq_norm".into()];
            outs.extend(tg.params.iter().map(|p| format!("new:{}", p.name)));
            outs.extend(tg.states.iter().map(|s| format!("new:{}", s.name)));
            let names: Vec<&str> = outs.iter().map(String::as_str).collect();
            let fused = run(&tg.graph, &env, &names).expect("the fused step runs");
            // The first half: the gradients.
            let grad_names: Vec<String> = tg
                .params
                .iter()
                .map(|p| format!("grad:{}", p.name))
                .collect();
            let gn: Vec<&str> = grad_names.iter().map(String::as_str).collect();
            let grads = run(&tg.grad_graph, &env, &gn).expect("the gradients run");
            // The second half, on them.
            let (ug, states) = update_graph(&tg.params, &opt, clip);
            assert_eq!(states, tg.states, "{name}");
            let mut env2: Env<f64> = Env::new(1, 2);
            for k in tg
                .params
                .iter()
                .map(|p| &p.name)
                .chain(tg.states.iter().map(|s| &s.name))
            {
                env2.values.insert(k.clone(), env.values[k].clone());
            }
            env2.values
                .insert("step".into(), env.values["step"].clone());
            for (n, g) in grad_names.iter().zip(grads) {
                env2.values.insert(n.clone(), g);
            }
            let split = run(&ug, &env2, &names).expect("the update runs");
            for ((n, a), b) in names.iter().zip(&fused).zip(&split) {
                for (u, v) in a.iter().zip(b.iter()) {
                    assert!(
                        (u - v).abs() <= 1e-12 * u.abs().max(1.0),
                        "{name} clip {clip:?} {n}: fused {u} split {v}"
                    );
                }
            }
        }
    }
}

/// What an observer saw: `Some(k)` when observed output k was handed over, `None` for a
/// tick between kernels; and the values handed over.
#[derive(Default)]
struct Seen {
    events: Vec<Option<usize>>,
    values: Vec<(usize, ArrayD<f32>)>,
}

impl Observer<f32> for Seen {
    fn ready(&mut self, k: usize, value: ndarray::ArrayViewD<f32>) {
        self.events.push(Some(k));
        self.values.push((k, value.to_owned()));
    }

    fn tick(&mut self) {
        self.events.push(None);
    }
}

#[test]
fn the_jit_hands_over_each_gradient_once_its_kernel_has_run() {
    let l = net();
    let opt = Optimizer::with_defaults("sgd", None).expect("sgd");
    let tg = training_graph(&l, &opt, None).expect("a training graph");
    let mut env: Env<f32> = Env::new(1, 2);
    for (i, p) in tg.params.iter().enumerate() {
        env.values
            .insert(p.name.clone(), array(&p.shape, i, -0.25).mapv(|v| v as f32));
    }
    env.values
        .insert("x".into(), array(&[5, 4], 99, -0.5).mapv(|v| v as f32));
    env.values
        .insert("y".into(), array(&[5, 1], 98, 0.0).mapv(|v| v as f32));
    // Last layer first, as data-parallel training asks for them.
    let names: Vec<String> = tg
        .params
        .iter()
        .rev()
        .map(|p| format!("grad:{}", p.name))
        .collect();
    let observed: Vec<&str> = names.iter().map(String::as_str).collect();
    let want = run(&tg.grad_graph, &env, &observed).expect("the interpreter runs");
    let graph = dlc_compiler::opt::optimize(&tg.grad_graph).graph;
    let mut jit = JitGraph::new(graph, 1).expect("compiles");
    let mut seen = Seen::default();
    let out = jit
        .run_observed(&env, &["loss"], &observed, &mut seen)
        .expect("the JIT runs");
    assert_eq!(out.len(), 1, "only the outputs not observed come back");
    // Every gradient once, equal to the interpreter's.
    let mut ks: Vec<usize> = seen.values.iter().map(|(k, _)| *k).collect();
    ks.sort_unstable();
    assert_eq!(ks, (0..names.len()).collect::<Vec<_>>());
    for (k, v) in &seen.values {
        for (a, b) in v.iter().zip(want[*k].iter()) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                names[*k]
            );
        }
    }
    // The last layer's gradients are handed over while kernels of the backward pass
    // (the first layer's gradients) are still to run.
    let at = |k: usize| {
        seen.events
            .iter()
            .position(|e| *e == Some(k))
            .expect("seen")
    };
    let first_layer = names.len() - 1; // grad of d1's first parameter
    for k in 0..2 {
        assert!(
            seen.events[at(k)..at(first_layer)].contains(&None),
            "{}: {:?}",
            names[k],
            seen.events
        );
    }
}
