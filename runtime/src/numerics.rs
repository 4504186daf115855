//! `dlc train --check-numerics`: after every step the loss, the gradients' norm and the new
//! parameters are checked. At the first value that is not finite, the step is run again on
//! the reference interpreter from the state before it: the forward pass op by op over the
//! graph as lowered (before fusion, each node with its place in the file), then the
//! gradients, then the update; the first op whose output is not finite is named with its
//! place (FILE:LINE:COL), the step, and whether it gave NaN or an infinity, even when the
//! JIT had fused that op into a kernel with others. (A value that is not finite but reaches
//! neither the loss nor the parameters, one a `where` discards, is not caught.)

use crate::checkpoint::Tensors;
use crate::session::Setup;
use dlc_compiler::interp::{self, Env};
use dlc_compiler::ir::Graph;
use dlc_dsl::{Diagnostic, Source};
use ndarray::ArrayD;

/// Whether a step's results are all finite.
pub fn step_is_finite(loss: f32, grad_norm: f32, params: &Tensors) -> bool {
    loss.is_finite()
        && grad_norm.is_finite()
        && params.values().all(|a| a.iter().all(|v| v.is_finite()))
}

/// What a tensor holds that is not finite: "NaN", "+inf" or "-inf" (NaN first).
fn not_finite(a: &ArrayD<f32>) -> Option<&'static str> {
    let mut inf = None;
    for &v in a.iter() {
        if v.is_nan() {
            return Some("NaN");
        }
        if v.is_infinite() && inf.is_none() {
            inf = Some(if v > 0.0 { "+inf" } else { "-inf" });
        }
    }
    inf
}

/// "NaN", or "an infinite value (-inf)".
fn kind(what: &str) -> String {
    if what == "NaN" {
        what.to_string()
    } else {
        format!("an infinite value ({what})")
    }
}

/// Run graph `g` (as lowered: its nodes have their places in `source`) on the reference
/// interpreter and name the first node, in the order the nodes run, whose value is not
/// finite, with its place in the file and `when` (e.g. "at step 3 (epoch 1)", or empty);
/// None when every value is finite.
pub fn first_not_finite(
    g: &Graph,
    env: &Env<f32>,
    source: &Source,
    when: &str,
) -> Result<Option<String>, String> {
    let roots: Vec<_> = g.outputs.iter().map(|(_, n)| *n).collect();
    let vals = interp::run_nodes(g, env, &roots)?;
    for n in g.schedule_from(&roots) {
        let Some(what) = vals.get(&n).and_then(not_finite) else {
            continue;
        };
        let op = g.node(n).op.name();
        let at = if when.is_empty() {
            String::new()
        } else {
            format!(" {when}")
        };
        let msg = format!(
            "`{op}` gave {}{at}: the first op whose output is not finite (--check-numerics)",
            kind(what)
        );
        return Ok(Some(match g.origins.get(&n) {
            Some(&span) => source
                .render(&Diagnostic::new(span, msg))
                .trim_end()
                .to_string(),
            None => format!("{}: {msg}", source.name),
        }));
    }
    Ok(None)
}

/// The message for the first value that is not finite in the step that ran objective
/// `objective` on `inputs` (x, y, …) from parameters `before` and optimizer state `opt`,
/// with the run's seed, the steps done before it, and `when` it ran ("at step 3 (epoch
/// 1)").
pub fn locate(
    setup: &Setup,
    objective: usize,
    (before, opt): (&Tensors, &Tensors),
    inputs: &[(String, ArrayD<f32>)],
    (seed, step): (u64, u64),
    when: &str,
) -> String {
    let mut env: Env<f32> = Env::new(seed, step);
    let rows = inputs
        .first()
        .map_or(0, |(_, a)| a.shape().first().copied().unwrap_or(1));
    env.sizes.insert("B".into(), rows);
    env.values
        .extend(before.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.values.extend(inputs.iter().cloned());
    // The forward pass, op by op in the order it runs.
    match first_not_finite(&setup.forward, &env, &setup.program.source, when) {
        Ok(Some(msg)) => return msg,
        Ok(None) => {}
        Err(e) => return format!("--check-numerics: {when}: running the step again failed: {e}"),
    }
    // The forward pass is finite: the gradients, then the update.
    let step_graphs = &setup.steps[objective].train;
    let names: Vec<String> = step_graphs
        .params
        .iter()
        .map(|p| format!("grad:{}", p.name))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let file = &setup.program.source.name;
    let grads = match interp::run(&step_graphs.grad_graph, &env, &refs) {
        Ok(g) => g,
        Err(e) => {
            return format!("--check-numerics: {when}: running the gradients again failed: {e}");
        }
    };
    for (p, gr) in step_graphs.params.iter().zip(&grads) {
        if let Some(what) = not_finite(gr) {
            return format!(
                "{file}: the gradient of `{}` is {} {when}, while the forward pass is finite (--check-numerics)",
                p.name,
                kind(what)
            );
        }
    }
    let (ug, states) = dlc_compiler::train::update_graph(
        &step_graphs.params,
        setup.cfg.objectives[objective].optimizer(&setup.cfg),
        setup.cfg.clip_norm,
    );
    for (n, gr) in names.iter().zip(grads) {
        env.values.insert(n.clone(), gr);
    }
    for s in &states {
        if let Some(v) = opt.get(&s.name) {
            env.values.insert(s.name.clone(), v.clone());
        }
    }
    env.values.insert(
        "step".into(),
        ArrayD::from_elem(ndarray::IxDyn(&[]), (step + 1) as f32),
    );
    let news: Vec<String> = step_graphs
        .params
        .iter()
        .map(|p| format!("new:{}", p.name))
        .collect();
    let refs: Vec<&str> = news.iter().map(String::as_str).collect();
    if let Ok(updated) = interp::run(&ug, &env, &refs) {
        for (p, v) in step_graphs.params.iter().zip(&updated) {
            if let Some(what) = not_finite(v) {
                return format!(
                    "{file}: the update of `{}` gave {} {when}, from finite gradients: try a smaller learning rate (--check-numerics)",
                    p.name,
                    kind(what)
                );
            }
        }
    }
    format!(
        "{file}: a value of the step is not finite {when}, yet running it again on the reference interpreter gives finite values throughout (--check-numerics)"
    )
}
