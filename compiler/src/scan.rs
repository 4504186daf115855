//! Building scans: a step function is traced into the graph being built, on placeholder
//! leaves for its carries and its step's slices; [`build`] then cuts what depends on
//! them out into a body graph. Everything the step uses that does not depend on them
//! (parameters, their transposes, constants) stays outside and becomes a captured
//! operand of the scan: loop-invariant code motion comes for free, and captured
//! parameters are ordinary graph edges that autodiff follows.
//!
//! One rewrite is applied while cutting, `hoist-scanned-matmul`: a product `x_t @ W` of a
//! step's slice by a captured matrix becomes one product `xs @ W` over all steps before
//! the scan, whose slices the body reads instead (an LSTM's input projection: one large
//! product rather than T small ones, and, in the backward pass, one product for W's
//! gradient).

use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::Type;
use std::collections::{HashMap, HashSet};

/// A traced step function, in the graph the scan goes into.
pub struct Trace {
    /// Initial carries.
    pub inits: Vec<NodeId>,
    /// Scanned values, time-major [T, …].
    pub xs: Vec<NodeId>,
    /// The placeholder leaves the step function saw for its carries and slices.
    pub carry_ph: Vec<NodeId>,
    pub x_ph: Vec<NodeId>,
    /// What the step function returned: new carries and per-step outputs.
    pub carry_out: Vec<NodeId>,
    pub ys: Vec<NodeId>,
    pub reverse: bool,
}

/// Whether values of this op differ from step to step even without operands that do
/// (random draws fold the step index into their stream).
pub(crate) fn step_dependent(g: &Graph, op: &Op) -> bool {
    match op {
        Op::Random { .. } => true,
        Op::Scan { body, .. } => has_random(&g.bodies[*body as usize]),
        _ => false,
    }
}

fn has_random(g: &Graph) -> bool {
    g.schedule()
        .iter()
        .any(|&n| step_dependent(g, &g.node(n).op))
}

/// A scan body under construction: outer nodes mapped to body nodes.
struct Cut<'a> {
    g: &'a Graph,
    t: &'a Trace,
    inner: HashSet<NodeId>,
    body: Graph,
    map: HashMap<NodeId, NodeId>,
    /// Scanned operands of the scan (outer, time-major), in body input order.
    xs: Vec<NodeId>,
    /// Captured operands (outer), in body input order.
    caps: Vec<NodeId>,
    /// Bodies of nested scans: outer index → index in `body.bodies`.
    moved: HashMap<u32, u32>,
}

impl Cut<'_> {
    /// The body value of an outer node: inner nodes are mapped, a slice placeholder
    /// becomes a body input on first use, anything else a captured input.
    fn value(&mut self, n: NodeId) -> NodeId {
        if let Some(&m) = self.map.get(&n) {
            return m;
        }
        let m = if let Some(j) = self.t.x_ph.iter().position(|&p| p == n) {
            let scanned = self.t.xs[j];
            self.scanned(scanned, self.g.ty(n).clone())
        } else {
            debug_assert!(!self.inner.contains(&n), "inner nodes are mapped in order");
            let k = self.caps.len();
            self.caps.push(n);
            self.body.add_ok(
                Op::Input {
                    name: format!("cap{k}"),
                    ty: (self.g.ty(n).dtype, self.g.ty(n).shape.clone()),
                },
                &[],
            )
        };
        self.map.insert(n, m);
        m
    }

    /// A new scanned operand (outer, [T, …]) and the body input of its slice.
    fn scanned(&mut self, outer: NodeId, slice: Type) -> NodeId {
        let j = self.xs.len();
        self.xs.push(outer);
        self.body.add_ok(
            Op::Input {
                name: format!("x{j}"),
                ty: (slice.dtype, slice.shape),
            },
            &[],
        )
    }
}

/// Cut the traced step out into a body and add the scan to `g`. Returns the scan's
/// outputs: the final carries, then the stacked per-step outputs [T, …].
pub fn build(g: &mut Graph, t: &Trace) -> Result<Vec<NodeId>, String> {
    for (i, (&a, &b)) in t.inits.iter().zip(&t.carry_out).enumerate() {
        if g.ty(a) != g.ty(b) {
            return Err(format!(
                "carry {i} starts as {} but the step returns {}",
                g.ty(a),
                g.ty(b)
            ));
        }
    }
    let roots: Vec<NodeId> = t.carry_out.iter().chain(&t.ys).copied().collect();
    let order = g.schedule_from(&roots);
    let mut inner: HashSet<NodeId> = HashSet::new();
    for &n in &order {
        let placeholder = t.carry_ph.contains(&n) || t.x_ph.contains(&n);
        if placeholder
            || step_dependent(g, &g.node(n).op)
            || g.inputs(n).iter().any(|i| inner.contains(i))
        {
            inner.insert(n);
        }
    }
    // Products of a slice by a captured matrix, hoisted out as one product over all steps.
    let mut hoisted: Vec<(NodeId, NodeId)> = Vec::new();
    for &n in &order {
        if !inner.contains(&n) {
            continue;
        }
        let ins = g.inputs(n);
        if let Op::MatMul {
            ta: false,
            tb: false,
        } = g.node(n).op
            && let Some(j) = t.x_ph.iter().position(|&p| p == ins[0])
            && !inner.contains(&ins[1])
            && g.ty(ins[1]).rank() == 2
        {
            let all = g.add(Op::matmul(), &[t.xs[j], ins[1]])?;
            hoisted.push((n, all));
        }
    }
    let snapshot = g.clone();
    let mut cut = Cut {
        g: &snapshot,
        t,
        inner,
        body: Graph::new(),
        map: HashMap::new(),
        xs: Vec::new(),
        caps: Vec::new(),
        moved: HashMap::new(),
    };
    for (i, &p) in t.carry_ph.iter().enumerate() {
        let ty = snapshot.ty(p);
        let m = cut.body.add_ok(
            Op::Input {
                name: format!("carry{i}"),
                ty: (ty.dtype, ty.shape.clone()),
            },
            &[],
        );
        cut.map.insert(p, m);
    }
    for &n in &order {
        if !cut.inner.contains(&n) || cut.map.contains_key(&n) || t.x_ph.contains(&n) {
            continue;
        }
        if let Some(&(_, all)) = hoisted.iter().find(|(m, _)| *m == n) {
            let m = cut.scanned(all, snapshot.ty(n).clone());
            cut.map.insert(n, m);
            continue;
        }
        let mut op = snapshot.node(n).op.clone();
        if let Op::Scan { body, .. } = &mut op {
            let old = *body;
            let new = match cut.moved.get(&old) {
                Some(&b) => b,
                None => {
                    cut.body.bodies.push(snapshot.bodies[old as usize].clone());
                    let b = cut.body.bodies.len() as u32 - 1;
                    cut.moved.insert(old, b);
                    b
                }
            };
            *body = new;
        }
        let ins: Vec<NodeId> = snapshot.inputs(n).iter().map(|&i| cut.value(i)).collect();
        let m = cut.body.add(op, &ins)?;
        cut.map.insert(n, m);
    }
    for (i, &c) in t.carry_out.iter().enumerate() {
        let m = cut.value(c);
        cut.body.set_output(format!("carry{i}"), m);
    }
    for (l, &y) in t.ys.iter().enumerate() {
        let m = cut.value(y);
        cut.body.set_output(format!("y{l}"), m);
    }
    if cut.xs.is_empty() {
        // The step reads no slice: the scan still needs its length.
        let ty = snapshot.ty(t.x_ph[0]).clone();
        cut.scanned(t.xs[0], ty);
    }
    let Cut { body, xs, caps, .. } = cut;
    let steps = g.ty(xs[0]).shape[0].clone();
    let mut outs_ty: Vec<Type> = t.inits.iter().map(|&i| g.ty(i).clone()).collect();
    for &y in &t.ys {
        let mut ty = g.ty(y).clone();
        ty.shape.insert(0, steps.clone());
        outs_ty.push(ty);
    }
    let operands: Vec<NodeId> = t.inits.iter().chain(&xs).chain(&caps).copied().collect();
    let bi = g.bodies.len() as u32;
    g.bodies.push(body);
    outs_ty
        .into_iter()
        .enumerate()
        .map(|(o, ty)| {
            g.add(
                Op::Scan {
                    body: bi,
                    output: o as u32,
                    carries: t.inits.len() as u32,
                    xs: xs.len() as u32,
                    reverse: t.reverse,
                    out: (ty.dtype, ty.shape),
                },
                &operands,
            )
        })
        .collect()
}

/// The graph as a step function of its scans' carries, to generate one step at a time
/// with the carry kept: the initial carries of every scan (numbered K in schedule order)
/// become inputs `carry:K`; outputs `init:K` give their original values and `last:K` the
/// final carries. With sequences of length 1, each run is one step of every scan.
pub fn stepper(g: &Graph) -> Graph {
    struct Group {
        body: u32,
        operands: Vec<NodeId>,
        new_operands: Vec<NodeId>,
        first_k: usize,
        op: Op,
    }
    let mut out = Graph::new();
    out.bodies = g.bodies.clone();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut k = 0;
    for n in g.schedule() {
        let op = g.node(n).op.clone();
        let mut ins: Vec<NodeId> = g.inputs(n).iter().map(|i| map[i]).collect();
        if let Op::Scan { body, carries, .. } = op {
            let operands = g.inputs(n);
            let at = match groups
                .iter()
                .position(|gr| gr.body == body && gr.operands == operands)
            {
                Some(at) => at,
                None => {
                    let mut new_operands = ins.clone();
                    for (i, slot) in new_operands.iter_mut().take(carries as usize).enumerate() {
                        let ty = out.ty(*slot).clone();
                        out.set_output(format!("init:{}", k + i), *slot);
                        *slot = out.add_ok(
                            Op::Input {
                                name: format!("carry:{}", k + i),
                                ty: (ty.dtype, ty.shape),
                            },
                            &[],
                        );
                    }
                    groups.push(Group {
                        body,
                        operands,
                        new_operands,
                        first_k: k,
                        op: op.clone(),
                    });
                    k += carries as usize;
                    groups.len() - 1
                }
            };
            ins = groups[at].new_operands.clone();
        }
        let m = out.add_ok(op, &ins);
        map.insert(n, m);
    }
    for (name, id) in &g.outputs {
        out.set_output(name.clone(), map[id]);
    }
    for gr in &groups {
        let Op::Scan {
            body,
            carries,
            xs,
            reverse,
            ..
        } = gr.op
        else {
            continue;
        };
        for i in 0..carries as usize {
            let ty = out.ty(gr.new_operands[i]).clone();
            let last = out.add_ok(
                Op::Scan {
                    body,
                    output: i as u32,
                    carries,
                    xs,
                    reverse,
                    out: (ty.dtype, ty.shape),
                },
                &gr.new_operands,
            );
            out.set_output(format!("last:{}", gr.first_k + i), last);
        }
    }
    out
}
