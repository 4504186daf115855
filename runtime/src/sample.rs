//! `dlc sample`: text from a character model, one step at a time. The model's forward
//! graph becomes a step function of its scans' carries (`scan::stepper`): each run reads
//! one character and the carries of the previous run, and gives the next character's
//! logits and the new carries, so generating N characters costs N steps, not N² (the
//! prefix is never run again).

use crate::engine::{Engine, EngineKind};
use dlc_compiler::interp::Env;
use dlc_compiler::ir::Graph;
use dlc_compiler::rng;
use ndarray::{ArrayD, IxDyn};

pub struct Options {
    pub length: usize,
    pub temperature: f64,
    pub seed: u64,
    /// Read first, and printed as the start of the sample.
    pub prime: String,
}

/// The stream of the sampling draws (distinct from the other uses of the seed).
const SAMPLE_KEY: u64 = 0x5341_4d50;

/// Generate `opts.length` characters after `opts.prime` from a model whose forward takes
/// `x` (character ids [B, T]) and returns logits [B, T, vocab].
pub fn sample(
    forward: &Graph,
    mut env: Env<f32>,
    vocab: &[char],
    opts: &Options,
    kind: EngineKind,
) -> Result<String, String> {
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(format!(
            "--temperature must be a positive number, got {}",
            opts.temperature
        ));
    }
    let prime: Vec<usize> = opts
        .prime
        .chars()
        .map(|c| {
            vocab.iter().position(|&v| v == c).ok_or_else(|| {
                format!("--prime: the character {c:?} is not in the model's vocabulary")
            })
        })
        .collect::<Result<_, _>>()?;
    if prime.is_empty() {
        return Err("--prime must have at least one character".into());
    }
    let step = dlc_compiler::scan::stepper(forward);
    let carries = (0..)
        .take_while(|k| step.output(&format!("init:{k}")).is_some())
        .count();
    if carries == 0 {
        return Err(
            "the model has no recurrence (scan) to carry from one character to the next".into(),
        );
    }
    let graph = dlc_compiler::opt::optimize(&step).graph;
    let engine = Engine::new(kind, graph, 1)?;
    let id = |c: usize| ArrayD::from_elem(IxDyn(&[1, 1]), c as f32);
    // The initial carries (as the model computes them, at batch 1): one run with
    // placeholder carries of their types, whose other results are not used.
    env.values.insert("x".into(), id(prime[0]));
    for (name, n) in step.leaves(|op| matches!(op, dlc_compiler::ops::Op::Input { .. })) {
        if name.starts_with("carry:") {
            let dims: Vec<usize> = step
                .ty(n)
                .shape
                .iter()
                .map(|d| d.known().unwrap_or(1))
                .collect();
            env.values.insert(name, ArrayD::zeros(IxDyn(&dims)));
        }
    }
    let mut inits: Vec<String> = (0..carries).map(|k| format!("init:{k}")).collect();
    inits.push("pred".into());
    let refs: Vec<&str> = inits.iter().map(|s| s.as_str()).collect();
    let mut state = engine.run(&env, &refs)?;
    state.pop();
    let mut outputs = vec!["pred".to_string()];
    outputs.extend((0..carries).map(|k| format!("last:{k}")));
    let outs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
    let mut text = opts.prime.clone();
    let mut next = |c: usize, state: &mut Vec<ArrayD<f32>>| -> Result<Vec<f32>, String> {
        env.values.insert("x".into(), id(c));
        for (k, v) in state.drain(..).enumerate() {
            env.values.insert(format!("carry:{k}"), v);
        }
        let mut out = engine.run(&env, &outs)?.into_iter();
        let logits = out.next().ok_or("no logits")?;
        state.extend(out);
        if logits.len() != vocab.len() {
            return Err(format!(
                "the model gives {} logits per character for a vocabulary of {}",
                logits.len(),
                vocab.len()
            ));
        }
        Ok(logits.iter().copied().collect())
    };
    let mut logits = Vec::new();
    for &c in &prime {
        logits = next(c, &mut state)?;
    }
    for i in 0..opts.length {
        let c = draw(
            &logits,
            opts.temperature,
            rng::uniform(opts.seed, SAMPLE_KEY, i as u64, 0),
        );
        text.push(vocab[c]);
        if i + 1 < opts.length {
            logits = next(c, &mut state)?;
        }
    }
    Ok(text)
}

/// The index drawn from softmax(logits / temperature) by the uniform number `u`.
fn draw(logits: &[f32], temperature: f64, u: f64) -> usize {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let w: Vec<f64> = logits
        .iter()
        .map(|&v| ((v as f64 - m) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    for (i, p) in w.iter().enumerate() {
        acc += p / total;
        if u < acc {
            return i;
        }
    }
    w.len() - 1
}

#[cfg(test)]
mod tests {
    use super::draw;

    #[test]
    fn draws_follow_the_probabilities() {
        // softmax([0, ln 3]) = [0.25, 0.75]
        let l = [0.0, 3f32.ln()];
        assert_eq!(draw(&l, 1.0, 0.2), 0);
        assert_eq!(draw(&l, 1.0, 0.3), 1);
        // A low temperature makes the larger logit almost certain.
        assert_eq!(draw(&l, 0.05, 0.01), 1);
    }
}
