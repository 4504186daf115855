//! Reverse-mode autodiff as an egg phase.
//!
//! The walk (plain code) visits the forward graph in reverse schedule order and gives
//! every differentiable input of every op a placeholder `vjp_i(node, adjoint)`, summing
//! contributions and undoing broadcasting with `sum_to`. The `grad` phase then runs only
//! the VJP rules of `rules.rs`, which rewrite every placeholder into primitive ops, and
//! extraction (placeholders cost infinity) turns the e-graph back into an IR graph that
//! holds the forward pass and the gradients.

pub mod lang;
pub mod rules;
mod scan;

use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use egg::{CostFunction, Extractor, Id, Language, Runner};
use lang::{EGraph, ENode};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Budgets of the `grad` phase.
pub const GRAD_NODE_LIMIT: usize = 500_000;
pub const GRAD_ITER_LIMIT: usize = 64;
pub const GRAD_TIME_LIMIT: Duration = Duration::from_secs(20);

/// What the `grad` phase did, for `--stats`.
#[derive(Clone, Debug, Default)]
pub struct GradStats {
    pub egraph_nodes: usize,
    pub iterations: usize,
    pub stop_reason: String,
    pub saturation_ms: f64,
    pub extract_ms: f64,
}

/// Extraction cost: placeholders are never chosen, nor scans whose body was replaced by
/// one that also keeps what the backward pass needs; otherwise prefer shallow terms.
struct NoPlaceholders<'a> {
    superseded: &'a HashSet<u32>,
}

impl CostFunction<ENode> for NoPlaceholders<'_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &ENode, mut costs: C) -> f64 {
        match &enode.op {
            Op::Vjp(_) => return f64::INFINITY,
            Op::Scan { body, .. } if self.superseded.contains(body) => return f64::INFINITY,
            _ => {}
        }
        1.0 + enode.fold(0.0, |m: f64, c| m.max(costs(c)))
    }
}

/// Differentiate output `loss` (a scalar) with respect to the leaves `wrt`. Returns a
/// graph with the original outputs plus `grad:NAME` for each leaf, and the statistics.
pub fn grad(g: &Graph, loss: &str, wrt: &[NodeId]) -> Result<(Graph, GradStats), String> {
    let loss_node = g
        .output(loss)
        .ok_or_else(|| format!("no output `{loss}` to differentiate"))?;
    vjp(g, &[(loss_node, None)], wrt)
}

/// Reverse-mode differentiation from several seeds: (node, its adjoint), the adjoint a
/// node of `g` or `None` for the scalar 1. Returns `g`'s outputs plus `grad:NAME` for
/// each leaf of `wrt`. A scan's body is differentiated by the same function
/// (`scan::vjp_scan`).
pub(crate) fn vjp(
    g: &Graph,
    seeds: &[(NodeId, Option<NodeId>)],
    wrt: &[NodeId],
) -> Result<(Graph, GradStats), String> {
    let mut order = g.schedule();
    for &(_, a) in seeds {
        if let Some(a) = a
            && !order.contains(&a)
        {
            order.insert(0, a);
        }
    }
    let mut eg = EGraph::default();
    let mut id: HashMap<NodeId, Id> = HashMap::new();
    for &n in &order {
        let args = g.inputs(n).iter().map(|i| id[i]).collect();
        id.insert(
            n,
            eg.add(ENode {
                op: g.node(n).op.clone(),
                args,
            }),
        );
    }
    // Which nodes depend on a leaf we differentiate with respect to.
    let mut needs: HashMap<NodeId, bool> = HashMap::new();
    for &n in &order {
        let v = wrt.contains(&n) || g.inputs(n).iter().any(|i| needs[i]);
        needs.insert(n, v);
    }
    let mut adj: HashMap<NodeId, Id> = HashMap::new();
    for &(n, a) in seeds {
        let s = match a {
            Some(a) => id[&a],
            None => eg.add(ENode {
                op: Op::scalar(1.0),
                args: vec![],
            }),
        };
        accumulate(&mut eg, &mut adj, n, s);
    }
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let groups = scan::groups(g, &order, &pos);
    let mut bodies = g.bodies.clone();
    let mut superseded: HashSet<u32> = HashSet::new();
    for &n in order.iter().rev() {
        let op = g.node(n).op.clone();
        if let Op::Scan { .. } = op {
            // A scan is differentiated once, for all its outputs, when the walk reaches
            // the first of them in schedule order (every user of every output is done).
            let Some(grp) = groups.iter().find(|gr| gr.first == n) else {
                continue;
            };
            let need: Vec<bool> = grp.operands.iter().map(|o| needs[o]).collect();
            let outs: Vec<Option<Id>> = grp
                .outputs
                .iter()
                .map(|m| m.and_then(|m| adj.get(&m).copied()))
                .collect();
            if !need.iter().any(|&b| b) || outs.iter().all(|a| a.is_none()) {
                continue;
            }
            let ctx = scan::Ctx {
                eg: &mut eg,
                id: &id,
                bodies: &mut bodies,
                superseded: &mut superseded,
            };
            for (i, c) in scan::vjp_scan(g, grp, &need, &outs, ctx)? {
                accumulate(&mut eg, &mut adj, grp.operands[i], c);
            }
            continue;
        }
        let Some(&gn) = adj.get(&n) else { continue };
        for (i, input) in g.inputs(n).into_iter().enumerate() {
            if !needs[&input] || rules::no_gradient(&op, i) {
                continue;
            }
            let mut c = eg.add(ENode {
                op: Op::Vjp(i),
                args: vec![id[&n], gn],
            });
            let (in_shape, out_shape) = (&g.ty(input).shape, &g.ty(n).shape);
            if (op.is_elementwise_binary() || op == Op::Select) && in_shape != out_shape {
                c = eg.add(ENode {
                    op: Op::SumTo {
                        shape: in_shape.clone(),
                    },
                    args: vec![c],
                });
            }
            accumulate(&mut eg, &mut adj, input, c);
        }
    }
    let mut roots: Vec<(String, Id)> = g
        .outputs
        .iter()
        .map(|(name, n)| (name.clone(), id[n]))
        .collect();
    for &w in wrt {
        let name = match &g.node(w).op {
            Op::Param { name, .. } | Op::Input { name, .. } | Op::State { name, .. } => {
                name.clone()
            }
            other => format!("{}{}", other.name(), w.index()),
        };
        let gid = match adj.get(&w) {
            Some(&a) => a,
            None => {
                // The loss does not depend on this leaf: its gradient is zero.
                zeros(&mut eg, &g.ty(w).shape)
            }
        };
        roots.push((format!("grad:{name}"), gid));
    }

    let t0 = Instant::now();
    let runner = Runner::default()
        .with_egraph(eg)
        .with_node_limit(GRAD_NODE_LIMIT)
        .with_iter_limit(GRAD_ITER_LIMIT)
        .with_time_limit(GRAD_TIME_LIMIT)
        .run(&rules::vjp_rules());
    let saturation_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stop_reason = match &runner.stop_reason {
        Some(egg::StopReason::Saturated) => "saturated".to_string(),
        Some(r) => format!("{r:?}"),
        None => "unknown".to_string(),
    };
    let t1 = Instant::now();
    let ex = Extractor::new(
        &runner.egraph,
        NoPlaceholders {
            superseded: &superseded,
        },
    );
    let mut out = Graph::new();
    out.bodies = bodies;
    let mut built: HashMap<Id, NodeId> = HashMap::new();
    for (name, root) in &roots {
        let n = build(&runner.egraph, &ex, *root, &mut built, &mut out)?;
        out.set_output(name.clone(), n);
    }
    let stats = GradStats {
        egraph_nodes: runner.egraph.total_number_of_nodes(),
        iterations: runner.iterations.len(),
        stop_reason,
        saturation_ms,
        extract_ms: t1.elapsed().as_secs_f64() * 1e3,
    };
    Ok((out.compact(), stats))
}

/// Add a gradient contribution `c` to the adjoint of `node`.
fn accumulate(eg: &mut EGraph, adj: &mut HashMap<NodeId, Id>, node: NodeId, c: Id) {
    let total = match adj.get(&node) {
        Some(&prev) => eg.add(ENode {
            op: Op::Add,
            args: vec![prev, c],
        }),
        None => c,
    };
    adj.insert(node, total);
}

/// Zeros of a shape, as an e-class.
pub(super) fn zeros(eg: &mut EGraph, shape: &crate::types::Shape) -> Id {
    let z = eg.add(ENode {
        op: Op::scalar(0.0),
        args: vec![],
    });
    eg.add(ENode {
        op: Op::Broadcast {
            shape: shape.clone(),
        },
        args: vec![z],
    })
}

/// Rebuild the chosen term of an e-class as IR nodes (iteratively, memoised per class).
fn build(
    eg: &EGraph,
    ex: &Extractor<NoPlaceholders<'_>, ENode, lang::Types>,
    root: Id,
    built: &mut HashMap<Id, NodeId>,
    out: &mut Graph,
) -> Result<NodeId, String> {
    let mut stack = vec![(eg.find(root), false)];
    while let Some((c, ready)) = stack.pop() {
        if built.contains_key(&c) {
            continue;
        }
        let node = ex.find_best_node(c);
        if let Op::Vjp(i) = node.op {
            let fwd = eg[node.args[0]]
                .nodes
                .iter()
                .find(|n| !matches!(n.op, Op::Vjp(_)));
            let what = fwd.map(|n| n.op.name()).unwrap_or("?");
            return Err(format!(
                "no gradient rule for input {i} of `{what}` (see autodiff/rules.rs)"
            ));
        }
        let kids: Vec<Id> = node.args.iter().map(|&a| eg.find(a)).collect();
        if ready {
            let ins: Vec<NodeId> = kids.iter().map(|k| built[k]).collect();
            let n = out
                .add(node.op.clone(), &ins)
                .map_err(|e| format!("internal: rebuilding `{}`: {e}", node.op.name()))?;
            built.insert(c, n);
        } else {
            stack.push((c, true));
            for k in kids {
                if !built.contains_key(&k) {
                    stack.push((k, false));
                }
            }
        }
    }
    Ok(built[&eg.find(root)])
}
