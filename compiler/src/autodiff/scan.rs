//! Backpropagation through time: the VJP of a scan is a reverse scan, never an unrolled
//! graph.
//!
//! The step body is differentiated by the same `grad` phase (`super::vjp`, seeded with
//! adjoint inputs for its outputs). The result holds the forward step and its backward
//! step; it is cut in two:
//! - the forward scan is replaced by one whose body also stacks, as extra outputs, the
//!   step-dependent values the backward step reads (residuals: activations, gate values,
//!   dropout masks); values that depend only on captured operands are recomputed instead;
//! - the backward step becomes the body of a scan in the other direction. Its carries
//!   are the adjoints of the forward carries, then one accumulator per captured operand
//!   that needs a gradient (a parameter's gradient summed over steps); it scans the
//!   residuals, the adjoints of the stacked outputs and the forward slices it reads, and
//!   stacks the gradients of the scanned operands.

use super::lang::{EGraph, ENode};
use super::zeros;
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::{DType, Shape, Type};
use egg::Id;
use std::collections::{HashMap, HashSet};

/// The outputs of one scan in the graph being differentiated.
pub(super) struct Group {
    /// The output earliest in schedule order: the VJP is built when the walk reaches it.
    pub first: NodeId,
    pub body: u32,
    pub carries: usize,
    pub xs: usize,
    pub reverse: bool,
    pub operands: Vec<NodeId>,
    /// The node of each output, where the graph uses it.
    pub outputs: Vec<Option<NodeId>>,
}

/// The scans of `g` among `order`.
pub(super) fn groups(g: &Graph, order: &[NodeId], pos: &HashMap<NodeId, usize>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for &n in order {
        let Op::Scan {
            body,
            output,
            carries,
            xs,
            reverse,
            ..
        } = g.node(n).op
        else {
            continue;
        };
        let operands = g.inputs(n);
        let i = match out
            .iter()
            .position(|gr| gr.body == body && gr.operands == operands)
        {
            Some(i) => i,
            None => {
                let outputs = g.bodies[body as usize].outputs.len();
                out.push(Group {
                    first: n,
                    body,
                    carries: carries as usize,
                    xs: xs as usize,
                    reverse,
                    operands,
                    outputs: vec![None; outputs],
                });
                out.len() - 1
            }
        };
        let gr = &mut out[i];
        gr.outputs[output as usize] = Some(n);
        if pos[&n] < pos[&gr.first] {
            gr.first = n;
        }
    }
    out
}

/// The state of the walk a scan's VJP adds to.
pub(super) struct Ctx<'a> {
    pub eg: &'a mut EGraph,
    pub id: &'a HashMap<NodeId, Id>,
    pub bodies: &'a mut Vec<Graph>,
    pub superseded: &'a mut HashSet<u32>,
}

fn input(g: &mut Graph, name: String, ty: &Type) -> NodeId {
    g.add_ok(
        Op::Input {
            name,
            ty: (ty.dtype, ty.shape.clone()),
        },
        &[],
    )
}

fn input_name(g: &Graph, n: NodeId) -> Option<&str> {
    match &g.node(n).op {
        Op::Input { name, .. } => Some(name),
        _ => None,
    }
}

fn stacked(steps: &crate::types::Dim, ty: &Type) -> (DType, Shape) {
    let mut shape = ty.shape.clone();
    shape.insert(0, steps.clone());
    (ty.dtype, shape)
}

/// Whether the backward step recomputes this forward value from the values it reads
/// rather than reading it stacked: elementwise ops and data movement are recomputed,
/// products, reductions, gathers, random draws and the step's inputs are stacked (JAX's
/// policy of saving what is expensive to compute).
fn recomputed(op: &Op) -> bool {
    use crate::opt::fuse::{Class, class};
    match class(op) {
        Class::Elementwise | Class::View | Class::Copy => {
            !matches!(op, Op::Gather | Op::ScatterAdd { .. })
        }
        Class::Generator => matches!(op, Op::Const { .. }),
        _ => false,
    }
}

/// Where a scanned input of the backward body comes from.
enum Src {
    /// A scanned operand of the forward scan.
    Operand(usize),
    /// The adjoint of stacked output `l` of the forward scan.
    Adjoint(usize),
    /// Residual `r` of the new forward scan.
    Residual(usize),
}

/// Gradient contributions (operand position, e-class) of a scan's operands, given the
/// adjoints of its outputs (`None`: no gradient flows into that output).
pub(super) fn vjp_scan(
    g: &Graph,
    grp: &Group,
    need: &[bool],
    adj: &[Option<Id>],
    cx: Ctx,
) -> Result<Vec<(usize, Id)>, String> {
    let (c, s) = (grp.carries, grp.xs);
    let body = &g.bodies[grp.body as usize];
    let ny = body.outputs.len() - c;
    let steps = g.ty(grp.operands[c]).shape[0].clone();
    // The step with adjoint inputs for its outputs.
    let mut f2 = body.clone();
    let mut seeds = Vec::new();
    for i in 0..c {
        let o = f2.output(&format!("carry{i}")).expect("scan body carry");
        let ty = f2.ty(o).clone();
        let a = input(&mut f2, format!("adj_carry{i}"), &ty);
        seeds.push((o, Some(a)));
    }
    for l in 0..ny {
        if adj[c + l].is_none() {
            continue;
        }
        let o = f2.output(&format!("y{l}")).expect("scan body output");
        let ty = f2.ty(o).clone();
        let a = input(&mut f2, format!("adj_y{l}"), &ty);
        seeds.push((o, Some(a)));
    }
    // Differentiate with respect to the carries, the scanned slices and captured values
    // that need a gradient (floats only).
    let leaves = f2.leaves(|op| matches!(op, Op::Input { .. }));
    let wanted = |name: &str| -> Option<usize> {
        if let Some(i) = name.strip_prefix("carry") {
            return i.parse().ok();
        }
        if let Some(j) = name.strip_prefix('x') {
            let j: usize = j.parse().ok()?;
            return need[c + j].then_some(c + j);
        }
        if let Some(k) = name.strip_prefix("cap") {
            let k: usize = k.parse().ok()?;
            return need[c + s + k].then_some(c + s + k);
        }
        None
    };
    let mut wrt = Vec::new();
    let mut wrt_pos = Vec::new();
    for (name, n) in &leaves {
        if f2.ty(*n).dtype != DType::F32 {
            continue;
        }
        if let Some(p) = wanted(name) {
            wrt.push(*n);
            wrt_pos.push((p, name.clone()));
        }
    }
    let (gf, _) = super::vjp(&f2, &seeds, &wrt)?;

    // Classify: nodes that depend on an adjoint (backward), and forward nodes that differ
    // from step to step (residual candidates).
    let order = gf.schedule();
    let mut back: HashSet<NodeId> = HashSet::new();
    let mut dep: HashSet<NodeId> = HashSet::new();
    for &n in &order {
        let ins = gf.inputs(n);
        let name = input_name(&gf, n);
        if name.is_some_and(|x| x.starts_with("adj_")) || ins.iter().any(|i| back.contains(i)) {
            back.insert(n);
        } else if name.is_some_and(|x| x.starts_with("carry") || x.starts_with('x'))
            || crate::scan::step_dependent(&gf, &gf.node(n).op)
            || ins.iter().any(|i| dep.contains(i))
        {
            dep.insert(n);
        }
    }
    // The backward body.
    let mut b = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut xs_src: Vec<Src> = Vec::new();
    let mut caps: Vec<usize> = Vec::new();
    let mut residuals: Vec<NodeId> = Vec::new();
    let mut moved: HashMap<u32, u32> = HashMap::new();
    let gf_inputs = gf.leaves(|op| matches!(op, Op::Input { .. }));
    for i in 0..c {
        let ty = body
            .ty(body.output(&format!("carry{i}")).expect("carry"))
            .clone();
        let m = input(&mut b, format!("carry{i}"), &ty);
        let adj_name = format!("adj_carry{i}");
        if let Some((_, a)) = gf_inputs.iter().find(|(nm, _)| *nm == adj_name) {
            map.insert(*a, m);
        }
    }
    let grad_outs: Vec<(usize, NodeId)> = wrt_pos
        .iter()
        .map(|(p, name)| {
            (
                *p,
                gf.output(&format!("grad:{name}")).expect("gradient output"),
            )
        })
        .collect();
    let roots: Vec<NodeId> = grad_outs.iter().map(|&(_, n)| n).collect();
    // Nodes to copy: backward nodes and the invariant forward values they read; the
    // walk stops at residuals.
    let mut copy: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = roots.clone();
    while let Some(n) = stack.pop() {
        if copy.contains(&n) || map.contains_key(&n) {
            continue;
        }
        if dep.contains(&n) && !back.contains(&n) && !recomputed(&gf.node(n).op) {
            continue;
        }
        copy.insert(n);
        stack.extend(gf.inputs(n));
    }
    let scanned = |b: &mut Graph, xs_src: &mut Vec<Src>, src: Src, ty: &Type| -> NodeId {
        let j = xs_src.len();
        xs_src.push(src);
        input(b, format!("x{j}"), ty)
    };
    for &n in &order {
        let ins = gf.inputs(n);
        for &i in &ins {
            if map.contains_key(&i) || copy.contains(&i) {
                continue;
            }
            if !(copy.contains(&n)) {
                break;
            }
            // A residual read by the backward step.
            let ty = gf.ty(i).clone();
            let src = match input_name(&gf, i) {
                Some(x) if x.starts_with('x') => Src::Operand(x[1..].parse().expect("x{j}")),
                _ => {
                    residuals.push(i);
                    Src::Residual(residuals.len() - 1)
                }
            };
            let m = scanned(&mut b, &mut xs_src, src, &ty);
            map.insert(i, m);
        }
        if !copy.contains(&n) || map.contains_key(&n) {
            continue;
        }
        let ty = gf.ty(n).clone();
        let m = match input_name(&gf, n) {
            Some(x) if x.starts_with("adj_y") => {
                let l: usize = x["adj_y".len()..].parse().expect("adj_y{l}");
                scanned(&mut b, &mut xs_src, Src::Adjoint(l), &ty)
            }
            Some(x) if x.starts_with("cap") => {
                let k: usize = x[3..].parse().expect("cap{k}");
                let q = caps.len();
                caps.push(k);
                input(&mut b, format!("cap{q}"), &ty)
            }
            Some(x) => return Err(format!("internal: backward step reads input `{x}`")),
            None => {
                let mut op = gf.node(n).op.clone();
                if let Op::Scan { body: inner, .. } = &mut op {
                    let old = *inner;
                    *inner = *moved.entry(old).or_insert_with(|| {
                        b.bodies.push(gf.bodies[old as usize].clone());
                        b.bodies.len() as u32 - 1
                    });
                }
                let bins: Vec<NodeId> = ins.iter().map(|i| map[i]).collect();
                b.add(op, &bins)?
            }
        };
        map.insert(n, m);
    }
    // Gradient outputs: carries, then accumulators of captured values; the slices'
    // gradients stacked.
    let mut acc_ops: Vec<usize> = Vec::new();
    let mut ys_ops: Vec<usize> = Vec::new();
    let mut carry_grads: Vec<Option<NodeId>> = vec![None; c];
    let mut acc_grads: Vec<NodeId> = Vec::new();
    let mut y_grads: Vec<NodeId> = Vec::new();
    for &(p, n) in &grad_outs {
        let v = map[&n];
        if p < c {
            carry_grads[p] = Some(v);
        } else if p < c + s {
            ys_ops.push(p);
            y_grads.push(v);
        } else {
            acc_ops.push(p);
            acc_grads.push(v);
        }
    }
    for (i, gv) in carry_grads.iter().enumerate() {
        let v = match gv {
            Some(v) => *v,
            None => {
                // The step does not read this carry: nothing flows to earlier steps.
                let shape = body
                    .ty(body.output(&format!("carry{i}")).expect("carry"))
                    .shape
                    .clone();
                let z = b.scalar(0.0);
                b.add_ok(Op::Broadcast { shape }, &[z])
            }
        };
        b.set_output(format!("carry{i}"), v);
    }
    for (a, (&p, &v)) in acc_ops.iter().zip(&acc_grads).enumerate() {
        let ty = g.ty(grp.operands[p]).clone();
        let acc = input(&mut b, format!("carry{}", c + a), &ty);
        let sum = b.add(Op::Add, &[acc, v])?;
        b.set_output(format!("carry{}", c + a), sum);
    }
    for (q, &v) in y_grads.iter().enumerate() {
        b.set_output(format!("y{q}"), v);
    }

    // The forward scan, now also stacking the residuals.
    let mut fwd = gf.clone();
    let mut outs: Vec<(String, NodeId)> = Vec::new();
    for i in 0..c {
        let name = format!("carry{i}");
        outs.push((name.clone(), gf.output(&name).expect("carry")));
    }
    for l in 0..ny + residuals.len() {
        let n = if l < ny {
            gf.output(&format!("y{l}")).expect("y")
        } else {
            residuals[l - ny]
        };
        outs.push((format!("y{l}"), n));
    }
    fwd.outputs = outs;
    let fwd = fwd.compact();
    let fb = cx.bodies.len() as u32;
    let eg = cx.eg;
    let operand_ids: Vec<Id> = grp.operands.iter().map(|o| cx.id[o]).collect();
    let mut fwd_out: Vec<Id> = Vec::new();
    for o in 0..c + ny + residuals.len() {
        let ty = if o < c {
            let t = g.ty(grp.operands[o]);
            (t.dtype, t.shape.clone())
        } else {
            stacked(
                &steps,
                fwd.ty(fwd.output(&format!("y{}", o - c)).expect("y")),
            )
        };
        let e = eg.add(ENode {
            op: Op::Scan {
                body: fb,
                output: o as u32,
                carries: c as u32,
                xs: s as u32,
                reverse: grp.reverse,
                out: ty,
            },
            args: operand_ids.clone(),
        });
        if let Some(Some(m)) = grp.outputs.get(o) {
            eg.union(cx.id[m], e);
        }
        fwd_out.push(e);
    }
    cx.bodies.push(fwd);
    cx.superseded.insert(grp.body);

    // The backward scan.
    let mut args: Vec<Id> = Vec::new();
    for i in 0..c {
        args.push(match adj[i] {
            Some(a) => a,
            None => zeros(eg, &g.ty(grp.operands[i]).shape),
        });
    }
    for &p in &acc_ops {
        args.push(zeros(eg, &g.ty(grp.operands[p]).shape));
    }
    for src in &xs_src {
        args.push(match *src {
            Src::Operand(j) => operand_ids[c + j],
            Src::Adjoint(l) => adj[c + l].expect("an adjoint input only where one flows"),
            Src::Residual(r) => fwd_out[c + ny + r],
        });
    }
    for &k in &caps {
        args.push(operand_ids[c + s + k]);
    }
    if xs_src.is_empty() {
        // The backward step reads no slice: scan the first forward operand for the length.
        let ty = g.ty(grp.operands[c]).clone();
        let mut t = ty.clone();
        t.shape.remove(0);
        input(&mut b, "x0".into(), &t);
        args.insert(c + acc_ops.len(), operand_ids[c]);
        xs_src.push(Src::Operand(0));
    }
    let bb = cx.bodies.len() as u32;
    let carries = c + acc_ops.len();
    let mut grads = Vec::new();
    let result_ty = |o: usize| -> (DType, Shape) {
        if o < c {
            let t = g.ty(grp.operands[o]);
            (t.dtype, t.shape.clone())
        } else if o < carries {
            let t = g.ty(grp.operands[acc_ops[o - c]]);
            (t.dtype, t.shape.clone())
        } else {
            let t = g.ty(grp.operands[ys_ops[o - carries]]);
            (t.dtype, t.shape.clone())
        }
    };
    for o in 0..carries + ys_ops.len() {
        let target = if o < c {
            if !need[o] {
                continue;
            }
            o
        } else if o < carries {
            acc_ops[o - c]
        } else {
            ys_ops[o - carries]
        };
        let e = eg.add(ENode {
            op: Op::Scan {
                body: bb,
                output: o as u32,
                carries: carries as u32,
                xs: xs_src.len() as u32,
                reverse: !grp.reverse,
                out: result_ty(o),
            },
            args: args.clone(),
        });
        grads.push((target, e));
    }
    cx.bodies.push(b);
    Ok(grads)
}
