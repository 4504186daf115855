//! Extraction of a DAG from an e-graph with local costs.
//!
//! egg's `Extractor` charges a shared subterm once per use (tree cost), which would make
//! a forward activation reused by the backward pass look several times as expensive as it
//! is. Here every class gets a *depth* d (the least height of a term it can produce), and
//! a class may only pick a node whose children are all strictly shallower: following picks
//! then always descends, so the result is acyclic. Among those nodes the one with the
//! least local cost (`cost.rs`) wins, ties broken by the op order, so extraction is
//! deterministic and no value is ever charged twice.

use super::cost::op_cost;
use crate::autodiff::lang::{EGraph, ENode};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::Type;
use egg::Id;
use std::collections::HashMap;

#[derive(Clone)]
pub struct Choice {
    best: HashMap<Id, ENode>,
}

impl Choice {
    pub fn new(eg: &EGraph) -> Choice {
        let classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
        // Least term height per class (Bellman–Ford style fixpoint).
        let mut depth: HashMap<Id, usize> = HashMap::new();
        loop {
            let mut changed = false;
            for &c in &classes {
                for n in &eg[c].nodes {
                    if matches!(n.op, Op::Vjp(_)) {
                        continue;
                    }
                    let kids: Option<Vec<usize>> = n
                        .args
                        .iter()
                        .map(|a| depth.get(&eg.find(*a)).copied())
                        .collect();
                    if let Some(k) = kids {
                        let d = 1 + k.into_iter().max().unwrap_or(0);
                        if depth.get(&c).is_none_or(|&old| d < old) {
                            depth.insert(c, d);
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut best = HashMap::new();
        for &c in &classes {
            let Some(&dc) = depth.get(&c) else { continue };
            let out = eg[c].data.ty.clone();
            // Least local cost; then the shallowest children (a folded form over the
            // form with an extra op below it); then the op order.
            let mut pick: Option<(f64, usize, &ENode)> = None;
            for n in &eg[c].nodes {
                if matches!(n.op, Op::Vjp(_)) {
                    continue;
                }
                let ok = n
                    .args
                    .iter()
                    .all(|a| depth.get(&eg.find(*a)).is_some_and(|&d| d < dc));
                if !ok {
                    continue;
                }
                let ins: Vec<Option<&Type>> =
                    n.args.iter().map(|a| eg[*a].data.ty.as_ref()).collect();
                let cost = out
                    .as_ref()
                    .map_or(f64::INFINITY, |t| op_cost(&n.op, &ins, t));
                let below: usize = n.args.iter().map(|a| depth[&eg.find(*a)]).sum();
                let better = match pick {
                    None => true,
                    Some((bc, bb, bn)) => {
                        cost < bc || (cost == bc && (below < bb || (below == bb && n < bn)))
                    }
                };
                if better {
                    pick = Some((cost, below, n));
                }
            }
            if let Some((_, _, n)) = pick {
                best.insert(c, n.clone());
            }
        }
        Choice { best }
    }

    /// The e-node chosen for a class.
    pub fn chosen(&self, class: Id) -> Option<&ENode> {
        self.best.get(&class)
    }

    /// Choose `node` for `class` instead (tests use this to evaluate every alternative).
    pub fn force(&mut self, class: Id, node: ENode) {
        self.best.insert(class, node);
    }

    /// Rebuild the chosen terms of `roots` as an IR graph (shared classes built once).
    pub fn build(
        &self,
        eg: &EGraph,
        roots: &[(String, Id)],
        bodies: &[Graph],
    ) -> Result<Graph, String> {
        let mut out = Graph::new();
        out.bodies = bodies.to_vec();
        let mut built: HashMap<Id, NodeId> = HashMap::new();
        for (name, root) in roots {
            let mut stack = vec![(eg.find(*root), false)];
            while let Some((c, ready)) = stack.pop() {
                if built.contains_key(&c) {
                    continue;
                }
                let node = self
                    .best
                    .get(&c)
                    .ok_or_else(|| format!("class {c} has no extractable term"))?;
                let kids: Vec<Id> = node.args.iter().map(|&a| eg.find(a)).collect();
                if ready {
                    let ins: Vec<NodeId> = kids.iter().map(|k| built[k]).collect();
                    let n = out
                        .add(node.op.clone(), &ins)
                        .map_err(|e| format!("rebuilding `{}`: {e}", node.op.name()))?;
                    built.insert(c, n);
                } else {
                    stack.push((c, true));
                    stack.extend(
                        kids.into_iter()
                            .filter(|k| !built.contains_key(k))
                            .map(|k| (k, false)),
                    );
                }
            }
            out.set_output(name.clone(), built[&eg.find(*root)]);
        }
        Ok(out)
    }
}
