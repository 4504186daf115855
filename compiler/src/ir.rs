//! The IR: a petgraph DAG of [`Op`] nodes with inferred types and named outputs.
//!
//! Edges run from an operand to its user; the edge weight is the operand's position.
//! `add` infers the type through the op table and hash-conses identical nodes (CSE).

use crate::ops::Op;
use crate::types::Type;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use std::collections::HashMap;

pub type NodeId = NodeIndex<u32>;

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: Type,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub g: DiGraph<Node, u32>,
    /// Named results, in a fixed order (the loss first, then updated parameters, …).
    pub outputs: Vec<(String, NodeId)>,
    /// Body graphs of `scan` nodes, by index.
    pub bodies: Vec<Graph>,
    memo: HashMap<(Op, Vec<NodeId>), NodeId>,
    /// Where in the user's file each node comes from (set while lowering: the expression,
    /// or the user's call of a prelude or imported function, that made it), for messages
    /// about values (`--check-numerics`). Kept by `compact`; other passes build new nodes.
    pub origins: HashMap<NodeId, dlc_dsl::ast::Span>,
    /// The origin `add` gives the nodes it makes.
    pub at: Option<dlc_dsl::ast::Span>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Add a node after checking its inputs against the op's shape rule. Identical nodes
    /// (same op, same inputs) are shared, except random draws, which are keyed anyway.
    pub fn add(&mut self, op: Op, ins: &[NodeId]) -> Result<NodeId, String> {
        let key = (op, ins.to_vec());
        if let Some(&n) = self.memo.get(&key) {
            return Ok(n);
        }
        let (op, ins) = key;
        let tys: Vec<&Type> = ins.iter().map(|&i| &self.g[i].ty).collect();
        let ty = op.infer(&tys)?;
        let n = self.g.add_node(Node { op: op.clone(), ty });
        for (pos, &i) in ins.iter().enumerate() {
            self.g.add_edge(i, n, pos as u32);
        }
        if let Some(at) = self.at {
            self.origins.insert(n, at);
        }
        self.memo.insert((op, ins), n);
        Ok(n)
    }

    /// Like `add`, for graph builders whose inputs are known to fit (autodiff, optimizers):
    /// a failure here is a compiler bug, reported with the op and input types.
    pub fn add_ok(&mut self, op: Op, ins: &[NodeId]) -> NodeId {
        match self.add(op.clone(), ins) {
            Ok(n) => n,
            Err(e) => {
                let tys: Vec<String> = ins.iter().map(|&i| self.g[i].ty.to_string()).collect();
                panic!(
                    "internal compiler error: {} on [{}]: {e}",
                    op.name(),
                    tys.join(", ")
                )
            }
        }
    }

    pub fn scalar(&mut self, v: f64) -> NodeId {
        self.add_ok(Op::scalar(v), &[])
    }

    pub fn node(&self, n: NodeId) -> &Node {
        &self.g[n]
    }

    pub fn ty(&self, n: NodeId) -> &Type {
        &self.g[n].ty
    }

    /// Operands of a node, in order.
    pub fn inputs(&self, n: NodeId) -> Vec<NodeId> {
        let mut es: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        es.sort();
        es.into_iter().map(|(_, s)| s).collect()
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    pub fn set_output(&mut self, name: impl Into<String>, n: NodeId) {
        let name = name.into();
        if let Some(slot) = self.outputs.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = n;
        } else {
            self.outputs.push((name, n));
        }
    }

    /// Nodes that the outputs depend on, operands before users, in a canonical order:
    /// depth-first from the outputs in order, operands in position order. Iterative, so
    /// deep graphs do not overflow the stack.
    pub fn schedule(&self) -> Vec<NodeId> {
        let roots: Vec<NodeId> = self.outputs.iter().map(|(_, n)| *n).collect();
        self.schedule_from(&roots)
    }

    /// The canonical schedule of the nodes the given roots depend on.
    pub fn schedule_from(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut order = Vec::new();
        let mut seen = vec![false; self.g.node_count()];
        for &root in roots {
            let mut stack: Vec<(NodeId, bool)> = vec![(root, false)];
            while let Some((n, expanded)) = stack.pop() {
                if expanded {
                    order.push(n);
                    continue;
                }
                if seen[n.index()] {
                    continue;
                }
                seen[n.index()] = true;
                stack.push((n, true));
                for i in self.inputs(n).into_iter().rev() {
                    if !seen[i.index()] {
                        stack.push((i, false));
                    }
                }
            }
        }
        order
    }

    /// Number of non-leaf ops one evaluation runs: what the reference engine "launches".
    pub fn op_count(&self) -> usize {
        self.schedule()
            .iter()
            .filter(|&&n| !self.g[n].op.is_leaf())
            .count()
    }

    /// Leaves of a kind, by name, in schedule order.
    pub fn leaves(&self, pick: impl Fn(&Op) -> bool) -> Vec<(String, NodeId)> {
        self.schedule()
            .into_iter()
            .filter(|&n| pick(&self.g[n].op))
            .filter_map(|n| match &self.g[n].op {
                Op::Input { name, .. } | Op::Param { name, .. } | Op::State { name, .. } => {
                    Some((name.clone(), n))
                }
                _ => None,
            })
            .collect()
    }

    /// The graph without the nodes and bodies its outputs do not need (dead nodes left by
    /// tracing a scan's step function, bodies whose scans were moved into other bodies).
    /// Bodies are renumbered in order of first use.
    pub fn compact(&self) -> Graph {
        let mut out = Graph::new();
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        let mut bodies: HashMap<u32, u32> = HashMap::new();
        for n in self.schedule() {
            let mut op = self.g[n].op.clone();
            if let Op::Scan { body, .. } | Op::Fused { body, .. } = &mut op {
                let old = *body;
                *body = *bodies.entry(old).or_insert_with(|| {
                    out.bodies.push(self.bodies[old as usize].compact());
                    out.bodies.len() as u32 - 1
                });
            }
            let ins: Vec<NodeId> = self.inputs(n).iter().map(|i| map[i]).collect();
            out.at = self.origins.get(&n).copied();
            let m = out.add_ok(op, &ins);
            map.insert(n, m);
        }
        out.at = None;
        for (name, id) in &self.outputs {
            out.set_output(name.clone(), map[id]);
        }
        out
    }

    /// Check the invariants every pass must keep: acyclic, every node's type equal to
    /// what its op's shape rule gives for its operands, no autodiff placeholder left,
    /// outputs present.
    pub fn verify(&self) -> Result<(), String> {
        if petgraph::algo::is_cyclic_directed(&self.g) {
            return Err("graph has a cycle".into());
        }
        for n in self.g.node_indices() {
            let node = &self.g[n];
            if matches!(node.op, Op::Vjp(_)) {
                return Err(format!(
                    "node {} is an unresolved gradient placeholder",
                    n.index()
                ));
            }
            let ins = self.inputs(n);
            let tys: Vec<&Type> = ins.iter().map(|&i| &self.g[i].ty).collect();
            match node.op.infer(&tys) {
                Ok(t) if t == node.ty => {}
                Ok(t) => {
                    return Err(format!(
                        "node {} ({}) has type {} but its rule gives {t}",
                        n.index(),
                        node.op.name(),
                        node.ty
                    ));
                }
                Err(e) => return Err(format!("node {} ({}): {e}", n.index(), node.op.name())),
            }
        }
        for (name, id) in &self.outputs {
            if self.g.node_weight(*id).is_none() {
                return Err(format!("output {name} points at a missing node"));
            }
        }
        for (i, b) in self.bodies.iter().enumerate() {
            b.verify().map_err(|e| format!("body {i}: {e}"))?;
        }
        for n in self.g.node_indices() {
            let (body, wanted) = match &self.g[n].op {
                Op::Scan {
                    body,
                    output,
                    carries,
                    ..
                } => (
                    *body,
                    vec![if output < carries {
                        format!("carry{output}")
                    } else {
                        format!("y{}", output - carries)
                    }],
                ),
                Op::Fused { body, output, .. } => (*body, vec![format!("out{output}")]),
                _ => continue,
            };
            let b = self
                .bodies
                .get(body as usize)
                .ok_or_else(|| format!("node {} uses missing body {body}", n.index()))?;
            for out in wanted {
                if b.output(&out).is_none() {
                    return Err(format!(
                        "body {body} of node {} has no output `{out}`",
                        n.index()
                    ));
                }
            }
        }
        Ok(())
    }
}
