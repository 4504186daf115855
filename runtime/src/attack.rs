//! Evaluation under adversarial attack (`attack(epsilons: [...])` in a training section,
//! run by `dlc eval`): the fast gradient sign method, x + ε·sign(∂loss/∂x), and its
//! control, x + ε·(a random ±1 per pixel), both with pixels clipped to [0, 1]. The
//! gradient with respect to the input is a graph of the training program
//! (`train::input_gradient`: the section's loss differentiated with respect to the leaf
//! `x` by the same `grad` phase as the training steps), optimized and run by the same
//! engine as the rest. The random signs are counter-based: (seed, the key of
//! "random_sign", example index, pixel), so every run draws the same ones.

use crate::checkpoint::Tensors;
use crate::engine::{Engine, EngineKind};
use crate::session::Setup;
use crate::trainer::{self, Scores};
use dlc_compiler::interp::Env;
use dlc_compiler::rng;
use dlc_data::{Dataset, Split};
use ndarray::{ArrayD, Zip};

/// The attacks, in the order their metrics lines are written.
pub const ATTACKS: [&str; 2] = ["fgsm", "random_sign"];

/// An engine computing `grad:x`, the gradient of the section's loss (its objectives'
/// total) with respect to the input (`train::input_gradient` of the evaluation graph).
pub fn input_gradient(setup: &Setup, kind: EngineKind, threads: usize) -> Result<Engine, String> {
    let gg = dlc_compiler::train::input_gradient(&setup.eval, "loss", "x")?;
    let graph = dlc_compiler::opt::optimize(&gg).graph;
    Engine::new(kind, graph, threads)
}

/// Test scores under `attack` at strength `eps`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    attack: &str,
    eps: f64,
    eval: &Engine,
    grad: &Engine,
    params: &Tensors,
    split: &Split,
    data: &Dataset,
    seed: u64,
) -> Result<Scores, String> {
    let eps = eps as f32;
    let key = rng::name_key(attack);
    let mut perturb = |rows: &[usize], x: &mut ArrayD<f32>, y: &ArrayD<f32>, env: &mut Env<f32>| {
        let pixels = x.len() / rows.len().max(1);
        let dir: ArrayD<f32> = match attack {
            "fgsm" => {
                // The parameters are already in `env`: only the batch is added.
                env.values.insert("x".into(), x.clone());
                env.values.insert("y".into(), y.clone());
                grad.run(env, &["grad:x"])?.remove(0).mapv(sign)
            }
            _ => {
                let mut d = ArrayD::zeros(x.raw_dim());
                for (k, v) in d.iter_mut().enumerate() {
                    let (row, pixel) = (rows[k / pixels], k % pixels);
                    let u = rng::uniform(seed, key, row as u64, pixel as u64);
                    *v = if u < 0.5 { -1.0 } else { 1.0 };
                }
                d
            }
        };
        Zip::from(x)
            .and(&dir)
            .for_each(|v, &d| *v = (*v + eps * d).clamp(0.0, 1.0));
        Ok(())
    };
    trainer::evaluate_perturbed(eval, params, split, data, seed, &mut perturb)
}

/// sign(v), with sign(0) = 0 (a pixel the loss does not depend on stays).
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
