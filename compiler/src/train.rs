//! The training graph: forward + backward (from `autodiff`) + the optimizer update,
//! as one graph. Inputs: `x`, `y`, `step` (the 1-based update count, for Adam's bias
//! correction), the parameters and the optimizer state; outputs: `loss`, `pred`,
//! `grad_sq_norm` (the squared global gradient norm before clipping) and `new:NAME` for every
//! parameter and state tensor.

use crate::autodiff::{self, GradStats};
use crate::ir::{Graph, NodeId};
use crate::lower::{Lowered, Objective, Optimizer, ParamInfo, TrainConfig};
use crate::ops::Op;
use crate::types::{DType, shape_of};

/// A tensor of optimizer state, zero at the start.
#[derive(Clone, Debug, PartialEq)]
pub struct StateInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

pub struct TrainingGraph {
    /// Forward, backward and update.
    pub graph: Graph,
    /// The unsimplified gradient graph (forward outputs and `grad:NAME`).
    pub grad_graph: Graph,
    /// The parameters the step updates (`new:NAME`).
    pub params: Vec<ParamInfo>,
    pub states: Vec<StateInfo>,
    pub grad_stats: GradStats,
}

/// Names of the optimizer's state tensors for one parameter.
fn state_names(opt: &Optimizer, p: &str) -> Vec<String> {
    let kinds: &[&str] = match opt {
        Optimizer::Sgd { .. } => &[],
        Optimizer::Momentum { .. } => &["v"],
        Optimizer::Adam { .. } => &["m", "v"],
        Optimizer::Adagrad { .. } => &["accum"],
        Optimizer::Adadelta { .. } => &["accum_grad", "accum_update"],
        Optimizer::RmsProp { .. } => &["ms"],
    };
    kinds.iter().map(|k| format!("opt.{k}.{p}")).collect()
}

/// The gradient of an objective's value (`loss`, the section's total, for an attack) with
/// respect to the input leaf `input` instead of the parameters: the graph of the fast
/// gradient sign attack (`grad:INPUT`), made by the same `grad` phase as the training steps.
pub fn input_gradient(lowered: &Lowered, objective: &str, input: &str) -> Result<Graph, String> {
    let g = &lowered.graph;
    let x = g
        .leaves(|op| matches!(op, Op::Input { name, .. } if name == input))
        .into_iter()
        .map(|(_, n)| n)
        .next()
        .ok_or_else(|| format!("the model has no input `{input}` to differentiate by"))?;
    Ok(autodiff::grad(g, objective, &[x])?.0)
}

/// The training steps of a section, one per objective in the order a step runs them on
/// a batch. A section with one `loss = …` has one step, [`training_graph`]'s.
pub fn step_graphs(
    lowered: &Lowered,
    cfg: &TrainConfig,
) -> Result<Vec<(Objective, TrainingGraph)>, String> {
    cfg.objectives
        .iter()
        .map(|o| {
            let opt = o.optimizer(cfg);
            let whole = cfg.objectives.len() == 1
                && o.name == "loss"
                && o.params.len() == lowered.params.len();
            // The first objective's step also computes `pred` and the reported values.
            let keep: Vec<&str> = if std::ptr::eq(o, &cfg.objectives[0]) {
                std::iter::once("pred")
                    .chain(cfg.reports.iter().map(String::as_str))
                    .collect()
            } else {
                Vec::new()
            };
            let tg = if whole {
                // Outputs only acting reads (a policy's `log_std`, a critic's `value`)
                // stay out of the step.
                let extra = |n: &str| n != "loss" && !keep.contains(&n);
                if lowered.graph.outputs.iter().any(|(n, _)| extra(n)) {
                    let mut graph = lowered.graph.clone();
                    graph.outputs.retain(|(n, _)| !extra(n));
                    let trimmed = Lowered {
                        graph: graph.compact(),
                        params: lowered.params.clone(),
                    };
                    training_graph(&trimmed, opt, cfg.clip_norm)?
                } else {
                    training_graph(lowered, opt, cfg.clip_norm)?
                }
            } else {
                objective_graph(lowered, o, opt, cfg.clip_norm, &keep)?
            };
            Ok((o.clone(), tg))
        })
        .collect()
}

/// The training step of one objective of a section with several (`minimize d_loss over
/// disc with …`): the forward graph with the objective's value as `loss` (the other
/// objectives' outputs dropped), differentiated with respect to the objective's parameters
/// only and updated by `opt`; every other parameter is a read-only input of the step.
/// Outputs as [`training_graph`]'s, `new:` only for this objective's parameters and states,
/// and of the other forward outputs only those in `keep` (the trainer reads `pred` and the
/// reported values from the first objective's step; a later objective that does not need
/// `forward` then does not compute it).
pub fn objective_graph(
    lowered: &Lowered,
    objective: &Objective,
    opt: &Optimizer,
    clip_norm: Option<f64>,
    keep: &[&str],
) -> Result<TrainingGraph, String> {
    let mut g = lowered.graph.clone();
    let value = g
        .output(&objective.name)
        .ok_or_else(|| format!("no objective `{}` in the lowered graph", objective.name))?;
    let kept: Vec<(String, NodeId)> = g
        .outputs
        .iter()
        .filter(|(n, _)| keep.contains(&n.as_str()))
        .cloned()
        .collect();
    g.outputs.clear();
    g.set_output("loss", value);
    for (n, id) in kept {
        g.set_output(n, id);
    }
    let one = Lowered {
        graph: g.compact(),
        params: lowered
            .params
            .iter()
            .filter(|p| objective.params.contains(&p.name))
            .cloned()
            .collect(),
    };
    training_graph(&one, opt, clip_norm)
}

pub fn training_graph(
    lowered: &Lowered,
    opt: &Optimizer,
    clip_norm: Option<f64>,
) -> Result<TrainingGraph, String> {
    let fwd = &lowered.graph;
    let wrt: Vec<NodeId> = lowered
        .params
        .iter()
        .filter_map(|p| {
            fwd.leaves(|op| matches!(op, Op::Param { .. }))
                .into_iter()
                .find(|(n, _)| *n == p.name)
                .map(|(_, id)| id)
        })
        .collect();
    let (grad_graph, grad_stats) = autodiff::grad(fwd, "loss", &wrt)?;
    let mut g = grad_graph.clone();
    g.outputs.retain(|(n, _)| !n.starts_with("grad:"));
    let grads: Vec<(ParamInfo, NodeId)> = lowered
        .params
        .iter()
        .filter_map(|p| {
            let gid = grad_graph.output(&format!("grad:{}", p.name))?;
            Some((p.clone(), gid))
        })
        .collect();
    let (params, states) = add_update(&mut g, opt, clip_norm, grads);
    Ok(TrainingGraph {
        graph: g,
        grad_graph,
        params,
        states,
        grad_stats,
    })
}

/// The optimizer update alone, the second half of a training step split for data-parallel
/// training: inputs `grad:NAME` (the gradients, averaged over the processes), `step`, the
/// parameters and the optimizer state; outputs `grad_sq_norm` and `new:NAME`, computed as
/// [`training_graph`]'s (its `grad_graph` gives the first half). Returns the graph and its
/// state tensors.
pub fn update_graph(
    params: &[ParamInfo],
    opt: &Optimizer,
    clip_norm: Option<f64>,
) -> (Graph, Vec<StateInfo>) {
    let mut g = Graph::new();
    let grads: Vec<(ParamInfo, NodeId)> = params
        .iter()
        .map(|p| {
            let gid = g.add_ok(
                Op::Input {
                    name: format!("grad:{}", p.name),
                    ty: (DType::F32, shape_of(&p.shape)),
                },
                &[],
            );
            (p.clone(), gid)
        })
        .collect();
    let (_, states) = add_update(&mut g, opt, clip_norm, grads);
    (g, states)
}

/// Add to `g` the update of every (parameter, its gradient's node): the global gradient
/// norm (`grad_sq_norm`), clipping, the optimizer's rule, and the outputs `new:NAME` of
/// the parameters and their state. Returns the parameters updated and the state tensors.
fn add_update(
    g: &mut Graph,
    opt: &Optimizer,
    clip_norm: Option<f64>,
    with_grads: Vec<(ParamInfo, NodeId)>,
) -> (Vec<ParamInfo>, Vec<StateInfo>) {
    let step = g.add_ok(
        Op::Input {
            name: "step".into(),
            ty: (DType::F32, vec![]),
        },
        &[],
    );
    let mut grads: Vec<(ParamInfo, NodeId, NodeId)> = Vec::new();
    for (p, gid) in with_grads {
        let pid = g.add_ok(
            Op::Param {
                name: p.name.clone(),
                ty: (DType::F32, shape_of(&p.shape)),
            },
            &[],
        );
        grads.push((p.clone(), pid, gid));
    }
    // The global gradient norm before clipping, reported per step (`grad_sq_norm`, squared).
    // Every gradient as a row [1, n], concatenated into one row: the sum of squares is
    // then one copy and one row kernel for the whole model, not fused into the kernels
    // that compute the gradients, and its squares are not shared with the update.
    let rows: Vec<NodeId> = grads
        .iter()
        .map(|(p, _, gid)| {
            let n: usize = p.shape.iter().product();
            g.add_ok(
                Op::Reshape {
                    shape: shape_of(&[1, n]),
                },
                &[*gid],
            )
        })
        .collect();
    let squares = match rows.len() {
        0 => g.scalar(0.0),
        _ => {
            let all = g.add_ok(Op::Concat { axis: 1 }, &rows);
            let sq = g.add_ok(Op::Mul, &[all, all]);
            g.add_ok(
                Op::Sum {
                    axes: vec![0, 1],
                    keep: false,
                },
                &[sq],
            )
        }
    };
    // The caller takes the square root of this scalar (no kernel of its own).
    g.set_output("grad_sq_norm", squares);
    if let Some(c) = clip_norm {
        // Global-norm clipping: g ← g · min(1, c / ‖g‖).
        let norm = g.add_ok(Op::Sqrt, &[squares]);
        let cn = g.scalar(c);
        let ratio = g.add_ok(Op::Div, &[cn, norm]);
        let one = g.scalar(1.0);
        let scale = g.add_ok(Op::Minimum, &[one, ratio]);
        for e in grads.iter_mut() {
            e.2 = g.add_ok(Op::Mul, &[e.2, scale]);
        }
    }
    let mut states = Vec::new();
    // The parameters the step updates: those the loss reaches (an objective's member
    // may have parameters its loss does not read, such as a bias behind a penalty).
    let updated: Vec<ParamInfo> = grads.iter().map(|(p, _, _)| p.clone()).collect();
    for (p, pid, gid) in grads {
        let names = state_names(opt, &p.name);
        let mut st = Vec::new();
        for n in &names {
            states.push(StateInfo {
                name: n.clone(),
                shape: p.shape.clone(),
            });
            st.push(g.add_ok(
                Op::State {
                    name: n.clone(),
                    ty: (DType::F32, shape_of(&p.shape)),
                },
                &[],
            ));
        }
        let (new_p, new_st) = update(g, opt, pid, gid, &st, step);
        g.set_output(format!("new:{}", p.name), new_p);
        for (n, v) in names.iter().zip(new_st) {
            g.set_output(format!("new:{n}"), v);
        }
    }
    (updated, states)
}

/// One optimizer step for one parameter: the papers' update rules.
fn update(
    g: &mut Graph,
    opt: &Optimizer,
    p: NodeId,
    grad: NodeId,
    st: &[NodeId],
    step: NodeId,
) -> (NodeId, Vec<NodeId>) {
    let c = |g: &mut Graph, v: f64| g.scalar(v);
    let mul = |g: &mut Graph, a: NodeId, b: NodeId| g.add_ok(Op::Mul, &[a, b]);
    let add = |g: &mut Graph, a: NodeId, b: NodeId| g.add_ok(Op::Add, &[a, b]);
    let sub = |g: &mut Graph, a: NodeId, b: NodeId| g.add_ok(Op::Sub, &[a, b]);
    let div = |g: &mut Graph, a: NodeId, b: NodeId| g.add_ok(Op::Div, &[a, b]);
    let sqrt = |g: &mut Graph, a: NodeId| g.add_ok(Op::Sqrt, &[a]);
    // decay·s + (1 − decay)·x
    let ema = |g: &mut Graph, s: NodeId, x: NodeId, decay: f64| {
        let d = g.scalar(decay);
        let e = g.scalar(1.0 - decay);
        let a = g.add_ok(Op::Mul, &[d, s]);
        let b = g.add_ok(Op::Mul, &[e, x]);
        g.add_ok(Op::Add, &[a, b])
    };
    match *opt {
        Optimizer::Sgd { lr } => {
            let l = c(g, lr);
            let d = mul(g, l, grad);
            (sub(g, p, d), vec![])
        }
        Optimizer::Momentum { lr, beta } => {
            let b = c(g, beta);
            let bv = mul(g, b, st[0]);
            let v = add(g, bv, grad);
            let l = c(g, lr);
            let d = mul(g, l, v);
            (sub(g, p, d), vec![v])
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let m = ema(g, st[0], grad, beta1);
            let g2 = mul(g, grad, grad);
            let v = ema(g, st[1], g2, beta2);
            // Bias correction: m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).
            let one = c(g, 1.0);
            let b1 = c(g, beta1);
            let b2 = c(g, beta2);
            let p1 = g.add_ok(Op::Pow, &[b1, step]);
            let p2 = g.add_ok(Op::Pow, &[b2, step]);
            let c1 = sub(g, one, p1);
            let c2 = sub(g, one, p2);
            let mh = div(g, m, c1);
            let vh = div(g, v, c2);
            let sv = sqrt(g, vh);
            let e = c(g, eps);
            let den = add(g, sv, e);
            let r = div(g, mh, den);
            let l = c(g, lr);
            let d = mul(g, l, r);
            (sub(g, p, d), vec![m, v])
        }
        Optimizer::Adagrad { lr, eps } => {
            let g2 = mul(g, grad, grad);
            let a = add(g, st[0], g2);
            let sa = sqrt(g, a);
            let e = c(g, eps);
            let den = add(g, sa, e);
            let r = div(g, grad, den);
            let l = c(g, lr);
            let d = mul(g, l, r);
            (sub(g, p, d), vec![a])
        }
        Optimizer::Adadelta { lr, rho, eps } => {
            // Zeiler 2012: E[g²] ← ρE[g²] + (1−ρ)g²; Δx = −√(E[Δx²]+ε)/√(E[g²]+ε)·g;
            // E[Δx²] ← ρE[Δx²] + (1−ρ)Δx²; x ← x + lr·Δx.
            let g2 = mul(g, grad, grad);
            let eg2 = ema(g, st[0], g2, rho);
            let e = c(g, eps);
            let num0 = add(g, st[1], e);
            let num = sqrt(g, num0);
            let den0 = add(g, eg2, e);
            let den = sqrt(g, den0);
            let ratio = div(g, num, den);
            let dx = mul(g, ratio, grad);
            let dx2 = mul(g, dx, dx);
            let edx = ema(g, st[1], dx2, rho);
            let l = c(g, lr);
            let step_ = mul(g, l, dx);
            (sub(g, p, step_), vec![eg2, edx])
        }
        Optimizer::RmsProp { lr, rho, eps } => {
            let g2 = mul(g, grad, grad);
            let s = ema(g, st[0], g2, rho);
            let ss = sqrt(g, s);
            let e = c(g, eps);
            let den = add(g, ss, e);
            let r = div(g, grad, den);
            let l = c(g, lr);
            let d = mul(g, l, r);
            (sub(g, p, d), vec![s])
        }
    }
}
