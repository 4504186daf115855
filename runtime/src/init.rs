//! Parameter initialisation, drawn from (seed, parameter name, element index) so that
//! adding a parameter does not change how the others start.

use dlc_compiler::lower::{Init, ParamInfo};
use dlc_compiler::rng;
use ndarray::{ArrayD, IxDyn};

/// Fan-in and fan-out of a parameter of this shape (Keras' convention for dense kernels).
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [i, o] => (*i as f64, *o as f64),
        [rest @ .., i, o] => {
            let field: usize = rest.iter().product();
            ((i * field) as f64, (o * field) as f64)
        }
    }
}

pub fn init_param(p: &ParamInfo, seed: u64) -> ArrayD<f32> {
    let n: usize = p.shape.iter().product();
    let key = rng::name_key(&p.name);
    // A step no training step reaches keeps these draws apart from in-graph randomness.
    let step = u64::MAX;
    let (fan_in, fan_out) = fans(&p.shape);
    let normal =
        |i: usize, mean: f64, std: f64| mean + std * rng::normal(seed, key, step, i as u64);
    let uniform =
        |i: usize, lo: f64, hi: f64| lo + (hi - lo) * rng::uniform(seed, key, step, i as u64);
    let data: Vec<f32> = (0..n)
        .map(|i| {
            (match p.init {
                Init::Zeros => 0.0,
                Init::Ones => 1.0,
                Init::Constant(v) => v,
                Init::Normal(m, s) => normal(i, m, s),
                Init::Uniform(lo, hi) => uniform(i, lo, hi),
                Init::Glorot => {
                    let limit = (6.0 / (fan_in + fan_out)).sqrt();
                    uniform(i, -limit, limit)
                }
                Init::He => normal(i, 0.0, (2.0 / fan_in).sqrt()),
                Init::Lecun => normal(i, 0.0, (1.0 / fan_in).sqrt()),
                Init::Identity => {
                    let cols = p.shape.get(1).copied().unwrap_or(1);
                    if i / cols == i % cols { 1.0 } else { 0.0 }
                }
            }) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&p.shape), data).expect("shape matches the element count")
}
