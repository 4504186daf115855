//! Data-parallel training splits a step in two: the gradients (each process on its rows),
//! then, once they are averaged, the optimizer update. The two halves give what the fused
//! step gives, for every optimizer, with and without clipping.

use dlc_compiler::interp::{Env, run};
use dlc_compiler::lower::{DataSig, Mode, Optimizer, Program};
use dlc_compiler::train::{training_graph, update_graph};
use dlc_compiler::types::{Dim, Type};
use ndarray::{ArrayD, IxDyn};

const NET: &str = "model Net {
  d1 = Dense(4, 8, activation: tanh)
  d2 = Dense(8, 1)
  fn forward(x: f32[B, 4]) -> f32[B, 1] { d2(d1(x)) }
}
train Net on toy { loss = mse(forward(x), y) }
";

fn array(shape: &[usize], salt: usize, lo: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|j| lo + (((j * 7 + salt * 13) as f64) * 0.37).sin().abs() * 0.5)
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

#[test]
fn gradients_then_update_equal_the_fused_step() {
    let prog = Program::parse("net.dl", NET.as_bytes()).unwrap_or_else(|_| panic!("parses"));
    let sig = DataSig {
        name: "toy".into(),
        dims: vec![],
        x: Type::f32(vec![Dim::Sym("B".into()), Dim::Known(4)]),
        y: Type::f32(vec![Dim::Sym("B".into()), Dim::Known(1)]),
        experience: Vec::new(),
        sparse: Vec::new(),
    };
    let (l, _) = prog
        .lower_training(&sig, Mode::Train)
        .unwrap_or_else(|d| panic!("{d:?}"));
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
