//! Training sections with several objectives (`minimize NAME over MEMBERS with OPT`): what
//! lowering makes of them, the errors a user gets, and each objective's training step
//! (its own parameters updated, every other parameter read only).

use dlc_compiler::lower::{Lowered, Mode, Program, TrainConfig};
use dlc_compiler::train::objective_graph;

/// A toy GAN on [B, 4] data: a generator (here of the data itself, for a deterministic
/// test) and a discriminator, with the logistic losses.
const GAN: &str = r#"
model Gan {
  gen = Dense(4, 4, activation: sigmoid)
  disc = Dense(4, 1)
  fn forward(x: f32[B, 4]) -> f32[B, 1] { disc(x) }
}
fn softplus(t) { log(1 + exp(t)) }
train Gan on toy {
  fake = gen(x)
  d_loss = mean(softplus(-disc(x))) + mean(softplus(disc(stop_gradient(fake))))
  g_loss = mean(softplus(-disc(fake)))
  minimize d_loss over disc with adam(lr: 2e-4)
  minimize g_loss over gen with adam(lr: 1e-3)
}
"#;

fn lower(src: &str) -> Result<(Lowered, TrainConfig), Vec<String>> {
    let prog = Program::parse("gan.dl", src.as_bytes()).unwrap_or_else(|(s, d)| {
        panic!(
            "parse: {:?}",
            d.iter().map(|d| s.render(d)).collect::<Vec<_>>()
        )
    });
    prog.lower_training(&dlc_tests::toy_signature(4), Mode::Train)
        .map_err(|d| d.iter().map(|d| prog.source.render(d)).collect())
}

#[test]
fn each_minimize_is_an_objective_over_its_members() {
    let (l, cfg) = lower(GAN).unwrap_or_else(|e| panic!("{e:?}"));
    let names: Vec<&str> = cfg.objectives.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["d_loss", "g_loss"], "in the order they run");
    assert_eq!(cfg.objectives[0].params, ["disc.w", "disc.b"]);
    assert_eq!(cfg.objectives[1].params, ["gen.w", "gen.b"]);
    assert!(l.graph.output("d_loss").is_some() && l.graph.output("g_loss").is_some());
    // `loss`, the total the metrics report, is the sum of the objectives.
    let total = l.graph.output("loss").expect("a total");
    let parts = [
        l.graph.output("d_loss").unwrap(),
        l.graph.output("g_loss").unwrap(),
    ];
    assert!(matches!(l.graph.node(total).op, dlc_compiler::ops::Op::Add));
    assert_eq!(l.graph.inputs(total), parts);
    let lr = |i: usize| match cfg.objectives[i].optimizer(&cfg) {
        dlc_compiler::lower::Optimizer::Adam { lr, .. } => *lr,
        other => panic!("{other:?}"),
    };
    assert_eq!((lr(0), lr(1)), (2e-4, 1e-3));
}

#[test]
fn an_objectives_step_updates_only_its_own_parameters() {
    let (l, cfg) = lower(GAN).unwrap_or_else(|e| panic!("{e:?}"));
    for (o, other) in [(0, 1), (1, 0)] {
        let obj = &cfg.objectives[o];
        let keep: &[&str] = if o == 0 { &["pred"] } else { &[] };
        let tg = objective_graph(&l, obj, obj.optimizer(&cfg), None, keep).expect("differentiates");
        let news: Vec<&str> = tg
            .graph
            .outputs
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("new:"))
            .collect();
        for p in &obj.params {
            assert!(news.contains(&p.as_str()), "{}: no update of {p}", obj.name);
            assert!(news.contains(&format!("opt.m.{p}").as_str()));
        }
        for p in &cfg.objectives[other].params {
            assert!(
                !news.iter().any(|n| n.ends_with(p.as_str())),
                "{} updates {p}",
                obj.name
            );
        }
        assert!(tg.graph.output("loss").is_some());
        assert_eq!(
            tg.graph.output("pred").is_some(),
            o == 0,
            "pred from the first step only"
        );
        tg.graph.verify().expect("a valid graph");
    }
}

#[test]
fn a_single_loss_is_one_objective_over_every_parameter() {
    let src = GAN.replace(
        "  minimize d_loss over disc with adam(lr: 2e-4)\n  minimize g_loss over gen with adam(lr: 1e-3)\n",
        "  loss = d_loss + g_loss\n",
    );
    let (l, cfg) = lower(&src).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.objectives.len(), 1);
    assert_eq!(cfg.objectives[0].name, "loss");
    assert_eq!(cfg.objectives[0].params.len(), l.params.len());
    assert!(
        cfg.objectives[0].optimizer.is_none(),
        "the section's optimizer"
    );
}

fn error_of(src: &str) -> String {
    match lower(src) {
        Ok(_) => panic!("lowered: {src}"),
        Err(e) => e.join("\n"),
    }
}

#[test]
fn mistakes_in_objectives_are_clear_errors() {
    let e = error_of(&GAN.replace("over disc with", "over dics with"));
    assert!(
        e.contains("`dics` is not a member of `Gan`") && e.contains("did you mean `disc`"),
        "{e}"
    );
    let e = error_of(&GAN.replace("over gen with", "over disc with"));
    assert!(
        e.contains("objectives `d_loss` and `g_loss` both train disc.w"),
        "{e}"
    );
    let e = error_of(&GAN.replace("  minimize g_loss", "  loss = g_loss\n  minimize g_loss"));
    assert!(e.contains("names every objective"), "{e}");
    let e = error_of(&GAN.replace(
        "g_loss = mean(softplus(-disc(fake)))",
        "g_loss = softplus(-disc(fake))",
    ));
    assert!(
        e.contains("objective `g_loss` must be an f32 scalar"),
        "{e}"
    );
    let e = error_of(&GAN.replace("minimize g_loss over gen", "minimize d_loss over gen"));
    assert!(e.contains("a second objective named `d_loss`"), "{e}");
}

/// An objective's gradient with respect to the input (what the FGSM attack reads), from
/// the same program: `grad:x` of x's shape, equal to a central finite difference (f64).
#[test]
fn input_gradients_come_from_the_same_program() {
    use dlc_compiler::interp::{Env, run};
    use ndarray::{ArrayD, IxDyn};
    let (l, _) = lower(GAN).unwrap_or_else(|e| panic!("{e:?}"));
    // (g_loss: d_loss stops the gradient through the generator, a finite difference does not.)
    let g = dlc_compiler::train::input_gradient(&l, "g_loss", "x").expect("differentiates");
    let mut env: Env<f64> = Env::new(1, 0);
    for (i, p) in l.params.iter().enumerate() {
        let n: usize = p.shape.iter().product();
        let v = (0..n)
            .map(|j| ((j * 7 + i * 3) as f64 * 0.37).sin() * 0.5)
            .collect();
        env.values.insert(
            p.name.clone(),
            ArrayD::from_shape_vec(IxDyn(&p.shape), v).unwrap(),
        );
    }
    let x: Vec<f64> = (0..12).map(|j| (j as f64 * 0.29).cos()).collect();
    env.values.insert(
        "x".into(),
        ArrayD::from_shape_vec(IxDyn(&[3, 4]), x.clone()).unwrap(),
    );
    env.values.insert("y".into(), ArrayD::zeros(IxDyn(&[3, 1])));
    let grad = run(&g, &env, &["grad:x"]).expect("runs").remove(0);
    assert_eq!(grad.shape(), &[3, 4]);
    let loss_at = |xs: &[f64]| {
        let mut e = Env::new(1, 0);
        e.values = env.values.clone();
        e.values.insert(
            "x".into(),
            ArrayD::from_shape_vec(IxDyn(&[3, 4]), xs.to_vec()).unwrap(),
        );
        run(&l.graph, &e, &["g_loss"]).expect("runs")[0]
            .iter()
            .next()
            .copied()
            .unwrap()
    };
    for k in [0, 5, 11] {
        let h = 1e-6;
        let (mut up, mut down) = (x.clone(), x.clone());
        up[k] += h;
        down[k] -= h;
        let fd = (loss_at(&up) - loss_at(&down)) / (2.0 * h);
        let got = grad.as_standard_layout().as_slice().unwrap()[k];
        assert!(
            (fd - got).abs() <= 1e-6 * fd.abs().max(1.0),
            "x[{k}]: {got} vs {fd}"
        );
    }
    let e = dlc_compiler::train::input_gradient(&l, "d_loss", "z").unwrap_err();
    assert!(e.contains("no input `z`"), "{e}");
}
