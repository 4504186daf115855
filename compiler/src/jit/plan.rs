//! How each fused kernel runs: its `Plan`, made once per kernel body and set of sizes
//! (a native loop or row kernel, a matmul through the GEMM core with a native epilogue,
//! reductions staged around native loops, or the interpreter), and `--emit plan`.

use super::Jit;
use super::conv::WindowCore;
use super::exec::JitGraph;
use super::loops::{self, LoopKernel};
use super::rows;
use super::sgemm::{self, GemmPath};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::{Dim, Shape, show_shape};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::collections::HashMap;

/// A step of a staged kernel (reductions with elementwise work around them).
pub(super) enum Stage {
    /// Elementwise nodes of one level, as one native loop.
    Loop {
        kernel: LoopKernel,
        inputs: Vec<NodeId>,
        outputs: Vec<NodeId>,
    },
    /// One reduction (or other op) of the body, evaluated by the reference semantics.
    Op(NodeId),
    /// One reduction over adjacent axes, computed natively (`reduce.rs`).
    Reduce(NodeId),
}

pub(super) enum Plan {
    Loop(LoopKernel),
    /// Reductions and the elementwise levels between them.
    Staged(Vec<Stage>),
    MatMul {
        a: Operand,
        b: Operand,
        ta: bool,
        tb: bool,
        epilogue: Option<LoopKernel>,
        /// Whether the epilogue can run on each row panel right after the GEMM computes
        /// it: every output has the product's shape [m, n].
        panels: bool,
        /// The GEMM core for this product's shape (from the committed cost table).
        path: GemmPath,
    },
    /// A convolution or pooling op (`conv.rs`) with its elementwise epilogue.
    Window {
        core: WindowCore,
        operands: Vec<Operand>,
        epilogue: Option<LoopKernel>,
        /// Whether the epilogue runs on each image's part right after it is computed.
        panels: bool,
    },
    /// One data-movement op (`copy.rs`) on kernel inputs.
    Copy {
        op: Op,
        operands: Vec<Operand>,
        out: Vec<usize>,
    },
    Interpret,
}

/// An operand of a kernel's matmul: kernel input `in{K}`, or a constant of the body
/// (evaluated once, kept in the plan).
pub(super) enum Operand {
    Input(usize),
    Const(Box<ArrayD<f32>>),
}

impl Operand {
    pub(super) fn view<'a>(&'a self, ins: &'a [ArrayViewD<f32>]) -> ArrayViewD<'a, f32> {
        match self {
            Operand::Input(k) => ins[*k].view(),
            Operand::Const(a) => a.view(),
        }
    }
}

/// The one core op of a kernel body (a matmul or a window op, as `is_core` says) whose
/// operands are kernel inputs or constants, its operands, and the body with the core
/// replaced by one more input (`in{K}`, after every input of the body): the epilogue.
fn split_core(body: &Graph, is_core: fn(&Op) -> bool) -> Option<(NodeId, Vec<Operand>, Graph)> {
    let order = body.schedule();
    let cores: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| is_core(&body.node(n).op))
        .collect();
    let [m] = cores[..] else { return None };
    let input_index = |n: NodeId| match &body.node(n).op {
        Op::Input { name, .. } => name
            .strip_prefix("in")
            .and_then(|s| s.parse::<usize>().ok()),
        _ => None,
    };
    let operand = |n: NodeId| match &body.node(n).op {
        Op::Const { shape, data } => {
            ArrayD::from_shape_vec(IxDyn(shape), data.iter().map(|v| v.get() as f32).collect())
                .ok()
                .map(|a| Operand::Const(Box::new(a)))
        }
        _ => input_index(n).map(Operand::Input),
    };
    let operands: Vec<Operand> = body
        .inputs(m)
        .into_iter()
        .map(operand)
        .collect::<Option<_>>()?;
    let k = body
        .g
        .node_indices()
        .filter_map(input_index)
        .map(|i| i + 1)
        .max()
        .unwrap_or(0);
    let mut epi = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for &n in &order {
        let node = body.node(n);
        let id = if n == m {
            epi.add_ok(
                Op::Input {
                    name: format!("in{k}"),
                    ty: (node.ty.dtype, node.ty.shape.clone()),
                },
                &[],
            )
        } else {
            let ins: Vec<NodeId> = body.inputs(n).iter().map(|i| map[i]).collect();
            epi.add_ok(node.op.clone(), &ins)
        };
        map.insert(n, id);
    }
    for (name, n) in &body.outputs {
        epi.set_output(name.clone(), map[n]);
    }
    Some((m, operands, epi))
}

/// The matmul of a matmul kernel (operands that are kernel inputs or constants) and its
/// epilogue (`split_core`): rank-2 operands; a `[L…, K] @ [K, N]` product, whose leading
/// axes are rows; or a `contract_leading`, the product aᵀg of both operands' rows.
fn split_matmul(body: &Graph) -> Option<(Operand, Operand, bool, bool, Graph)> {
    let (m, operands, epi) = split_core(body, |op| {
        matches!(op, Op::MatMul { .. } | Op::ContractLeading)
    })?;
    let ops = body.inputs(m);
    let (ra, rb) = (body.ty(ops[0]).rank(), body.ty(ops[1]).rank());
    let (ta, tb) = match body.node(m).op {
        Op::ContractLeading => (true, false),
        Op::MatMul { ta, tb } if rb == 2 && (ra == 2 || !ta) => (ta, tb),
        _ => return None,
    };
    let [a, b]: [Operand; 2] = operands.try_into().ok()?;
    Some((a, b, ta, tb, epi))
}

/// A matmul operand as a matrix: its leading axes are rows.
pub(super) fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let (cols, lead) = shape.split_last().map_or((1, &[][..]), |(c, l)| (*c, l));
    (lead.iter().product(), cols)
}

/// The body with every `sum`, `mean` or `max` over both axes of a rank-2 value split into
/// the reduction along axis 1 and then along axis 0 (same value: each row has the same
/// number of elements), so that a row kernel can compute it: per row, then across rows in
/// row order. None when the body has no such reduction.
pub(super) fn split_full_reductions(body: &Graph) -> Option<Graph> {
    let full = |n: NodeId| {
        let op = &body.node(n).op;
        let (Op::Sum { axes, .. } | Op::Mean { axes, .. } | Op::Max { axes, .. }) = op else {
            return false;
        };
        let rank = body.ty(body.inputs(n)[0]).rank();
        rank == 2 && matches!(axes[..], [0, 1] | [1, 0])
    };
    let order = body.schedule();
    if !order.iter().any(|&n| full(n)) {
        return None;
    }
    let mut g = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    // Every input, used or not, so the kernel keeps the body's operand positions.
    for n in body.g.node_indices() {
        if matches!(body.node(n).op, Op::Input { .. }) {
            map.insert(n, g.add(body.node(n).op.clone(), &[]).ok()?);
        }
    }
    for &n in &order {
        if map.contains_key(&n) {
            continue;
        }
        let op = body.node(n).op.clone();
        let ins: Vec<NodeId> = body.inputs(n).iter().map(|i| map[i]).collect();
        let id = if full(n) {
            // The same reduction along one axis.
            let along = |axis: usize| {
                let axes = vec![axis];
                match op {
                    Op::Sum { keep, .. } => Op::Sum { axes, keep },
                    Op::Mean { keep, .. } => Op::Mean { axes, keep },
                    Op::Max { keep, .. } => Op::Max { axes, keep },
                    _ => unreachable!("checked by `full`"),
                }
            };
            let (inner, outer) = (along(1), along(0));
            let per_row = g.add(inner, &ins).ok()?;
            g.add(outer, &[per_row]).ok()?
        } else {
            g.add(op, &ins).ok()?
        };
        map.insert(n, id);
    }
    for (name, n) in &body.outputs {
        g.set_output(name.clone(), map[n]);
    }
    Some(g)
}

/// A body over `[R, d1, …, C]` values seen as one over `[R·d1·…, C]`: the leading axes
/// merge into one row axis with a symbol of its own (whose size is added to the returned
/// sizes). Values shaped `[R, d1, …, rest…]` become `[R·d1·…, rest…]`, their reductions
/// kept as 1s (`[1, 1, …, rest…]`) become `[1, rest…]`, and values without R stay as
/// they are. So the bias gradient of a convolution (`sum_to [C]` of an NHWC value) and
/// the softmax cross-entropy of `[B, T, V]` logits become row kernels. None when an op
/// reduces only some of the leading axes, or for other shapes and ops.
pub(super) fn flatten_leading(
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Option<(Graph, HashMap<String, usize>)> {
    let order = body.schedule();
    let red = order.iter().find(|&&n| body.node(n).op.is_reduction())?;
    let full = body.ty(body.inputs(*red)[0]).shape.clone();
    let r = full.len();
    let Some(Dim::Sym(row)) = full.first() else {
        return None;
    };
    if r < 3 {
        return None;
    }
    let lead = &full[..r - 1];
    let lead_n: usize = full[1..r - 1]
        .iter()
        .map(|d| d.known())
        .product::<Option<usize>>()?;
    let merged = Dim::Sym(format!("{row}·{}", show_shape(&full[1..r - 1])));
    let ones = vec![Dim::Known(1); r - 1];
    let row_sym = Dim::Sym(row.clone());
    // How a shape maps, and whether it had the leading axes (true) or their kept 1s.
    let reshape = |s: &Shape| -> Option<(Shape, bool)> {
        if s.len() >= r - 1 && s[..r - 1] == *lead {
            Some(([vec![merged.clone()], s[r - 1..].to_vec()].concat(), true))
        } else if s.len() >= r - 1 && s[..r - 1] == ones[..] && !s.contains(&row_sym) {
            Some(([vec![Dim::Known(1)], s[r - 1..].to_vec()].concat(), true))
        } else if !s.contains(&row_sym) {
            Some((s.clone(), false))
        } else {
            None
        }
    };
    // Axes of an operand of shape `s`: every leading axis, or none of them.
    let axes_of = |s: &Shape, axes: &[usize]| -> Option<Vec<usize>> {
        let (_, flat) = reshape(s)?;
        if !flat {
            return Some(axes.to_vec());
        }
        let leading = axes.iter().filter(|&&a| a < r - 1).count();
        if leading != 0 && leading != r - 1 {
            return None;
        }
        let mut out: Vec<usize> = if leading > 0 { vec![0] } else { vec![] };
        out.extend(axes.iter().filter(|&&a| a >= r - 1).map(|&a| a - (r - 2)));
        Some(out)
    };
    let mut g = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    // Every input, used or not, so the kernel keeps the body's operand positions.
    let inputs = body
        .g
        .node_indices()
        .filter(|&n| matches!(body.node(n).op, Op::Input { .. }));
    for n in inputs.chain(order.iter().copied()) {
        if map.contains_key(&n) {
            continue;
        }
        let ins: Vec<NodeId> = body.inputs(n).iter().map(|i| map[i]).collect();
        let x = || body.ty(body.inputs(n)[0]).shape.clone();
        let op = match body.node(n).op.clone() {
            Op::Input { name, ty } => Op::Input {
                name,
                ty: (ty.0, reshape(&ty.1)?.0),
            },
            Op::Broadcast { shape } => Op::Broadcast {
                shape: reshape(&shape)?.0,
            },
            Op::Reshape { shape } => Op::Reshape {
                shape: reshape(&shape)?.0,
            },
            Op::SumTo { shape } if !shape.contains(&row_sym) && !reshape(&shape)?.1 => {
                Op::SumTo { shape }
            }
            Op::Sum { axes, keep } => Op::Sum {
                axes: axes_of(&x(), &axes)?,
                keep,
            },
            Op::Mean { axes, keep } => Op::Mean {
                axes: axes_of(&x(), &axes)?,
                keep,
            },
            Op::Max { axes, keep } => Op::Max {
                axes: axes_of(&x(), &axes)?,
                keep,
            },
            Op::Softmax { axis } => Op::Softmax {
                axis: *axes_of(&x(), &[axis])?.first()?,
            },
            Op::LogSoftmax { axis } => Op::LogSoftmax {
                axis: *axes_of(&x(), &[axis])?.first()?,
            },
            op if op.is_reduction()
                || matches!(
                    op,
                    Op::Transpose { .. } | Op::Slice { .. } | Op::Concat { .. }
                ) =>
            {
                return None;
            }
            op => op,
        };
        let id = g.add(op, &ins).ok()?;
        if g.ty(id).shape != reshape(&body.ty(n).shape)?.0 {
            return None;
        }
        map.insert(n, id);
    }
    for (name, n) in &body.outputs {
        g.set_output(name.clone(), map[n]);
    }
    let mut sizes = syms.clone();
    let Dim::Sym(m) = merged else { return None };
    sizes.insert(m, syms.get(row)? * lead_n);
    Some((g, sizes))
}

/// A body whose only reductions sum every element of values of one known shape S
/// (a gradient's sum of squares) seen as one over `[R, C]` values, C the last axis of S
/// and R a symbol for the number of rows: the full sums become row-kernel reductions
/// (along each row, then across rows). Values of S's size in other known shapes are the
/// same row-major elements (reshapes between them vanish). None when the body has other
/// shapes or ops.
pub(super) fn rows_of_known(
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Option<(Graph, HashMap<String, usize>)> {
    let order = body.schedule();
    let red = order.iter().find(|&&n| body.node(n).op.is_reduction())?;
    let full = body.ty(body.inputs(*red)[0]).shape.clone();
    let dims: Vec<usize> = full.iter().map(|d| d.known()).collect::<Option<_>>()?;
    let c = *dims.last()?;
    let rows = dims.iter().product::<usize>() / c.max(1);
    let sym = format!("rows·{}", show_shape(&full));
    let flat: Shape = vec![Dim::Sym(sym.clone()), Dim::Known(c)];
    let numel = rows * c;
    let reshape = |s: &Shape| -> Option<Shape> {
        let known: Option<Vec<usize>> = s.iter().map(|d| d.known()).collect();
        if s.is_empty() {
            Some(s.clone())
        } else if known?.iter().product::<usize>() == numel {
            Some(flat.clone())
        } else {
            None
        }
    };
    let all: Vec<usize> = (0..full.len()).collect();
    let mut g = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let inputs = body
        .g
        .node_indices()
        .filter(|&n| matches!(body.node(n).op, Op::Input { .. }));
    for n in inputs.chain(order.iter().copied()) {
        if map.contains_key(&n) {
            continue;
        }
        let ins: Vec<NodeId> = body.inputs(n).iter().map(|i| map[i]).collect();
        let op = match body.node(n).op.clone() {
            Op::Input { name, ty } => Op::Input {
                name,
                ty: (ty.0, reshape(&ty.1)?),
            },
            Op::Broadcast { shape } => Op::Broadcast {
                shape: reshape(&shape)?,
            },
            Op::Sum { axes, keep: false } if axes == all => {
                let per_row = g
                    .add(
                        Op::Sum {
                            axes: vec![1],
                            keep: false,
                        },
                        &ins,
                    )
                    .ok()?;
                let id = g
                    .add(
                        Op::Sum {
                            axes: vec![0],
                            keep: false,
                        },
                        &[per_row],
                    )
                    .ok()?;
                map.insert(n, id);
                continue;
            }
            Op::Reshape { shape } if reshape(&shape).is_some() && !shape.is_empty() => {
                map.insert(n, ins[0]);
                continue;
            }
            op if op.is_reduction() || matches!(op, Op::Reshape { .. }) => return None,
            op => op,
        };
        let id = g.add(op, &ins).ok()?;
        reshape(&body.ty(n).shape)?;
        map.insert(n, id);
    }
    for (name, n) in &body.outputs {
        g.set_output(name.clone(), map[n]);
    }
    let mut sizes = syms.clone();
    sizes.insert(sym, rows);
    Some((g, sizes))
}

/// The concrete shape of kernel input `in{k}` of a body.
fn input_shape(
    body: &Graph,
    k: usize,
    syms: &HashMap<String, usize>,
) -> Result<Vec<usize>, String> {
    let name = format!("in{k}");
    let n = body
        .g
        .node_indices()
        .find(|&n| matches!(&body.node(n).op, Op::Input { name: x, .. } if *x == name))
        .ok_or_else(|| format!("kernel has no input {name}"))?;
    loops::concrete(&body.ty(n).shape, syms)
}

/// Whether every stage of a staged kernel is native (loops and native reductions).
pub(super) fn native_stages(st: &[Stage]) -> bool {
    st.iter().all(|s| !matches!(s, Stage::Op(_)))
}

/// Symbolic sizes in a canonical order, as a plan key.
pub(super) fn sym_key(syms: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut k: Vec<(String, usize)> = syms.iter().map(|(a, b)| (a.clone(), *b)).collect();
    k.sort();
    k
}

/// Split a kernel body into levels: every reduction starts a new level, and the
/// elementwise nodes of one level run as one native loop. None if some op has neither.
pub(super) fn stage(
    jit: &mut Jit,
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Result<Option<Vec<Stage>>, String> {
    let order = body.schedule();
    let mut level: HashMap<NodeId, usize> = HashMap::new();
    for &n in &order {
        let op = &body.node(n).op;
        let l = body.inputs(n).iter().map(|i| level[i]).max().unwrap_or(0);
        level.insert(n, if op.is_reduction() { l + 1 } else { l });
    }
    let is_leafish =
        |op: &Op| matches!(op, Op::Input { .. } | Op::Const { .. } | Op::Random { .. });
    let users = |n: NodeId| -> Vec<NodeId> {
        order
            .iter()
            .copied()
            .filter(|&u| body.inputs(u).contains(&n))
            .collect()
    };
    let outputs: Vec<NodeId> = body.outputs.iter().map(|(_, n)| *n).collect();
    let max_level = level.values().copied().max().unwrap_or(0);
    let mut stages = Vec::new();
    for l in 0..=max_level {
        // Reductions of this level first (they read lower levels), in schedule order.
        for &n in &order {
            if level[&n] == l && body.node(n).op.is_reduction() {
                let op = &body.node(n).op;
                let shape = |m: NodeId| loops::concrete(&body.ty(m).shape, syms);
                let native = match body.inputs(n).first() {
                    Some(&x) => super::reduce::supported(op, &shape(x)?, &shape(n)?),
                    None => false,
                };
                stages.push(if native {
                    Stage::Reduce(n)
                } else {
                    Stage::Op(n)
                });
            }
        }
        let members: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&n| {
                level[&n] == l && !body.node(n).op.is_reduction() && !is_leafish(&body.node(n).op)
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        // The loop's body: members, with outside values as inputs and constants copied in.
        let mut sub = Graph::new();
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        let mut inputs: Vec<NodeId> = Vec::new();
        for &m in &members {
            let mut args = Vec::new();
            for i in body.inputs(m) {
                let id = match map.get(&i) {
                    Some(&id) => id,
                    None => {
                        let node = body.node(i);
                        let id = if matches!(node.op, Op::Const { .. } | Op::Random { .. }) {
                            sub.add_ok(node.op.clone(), &[])
                        } else {
                            let k = inputs.len();
                            inputs.push(i);
                            sub.add_ok(
                                Op::Input {
                                    name: format!("in{k}"),
                                    ty: (node.ty.dtype, node.ty.shape.clone()),
                                },
                                &[],
                            )
                        };
                        map.insert(i, id);
                        id
                    }
                };
                args.push(id);
            }
            let id = sub.add(body.node(m).op.clone(), &args)?;
            map.insert(m, id);
        }
        let member_set: std::collections::HashSet<NodeId> = members.iter().copied().collect();
        let outs: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|&m| outputs.contains(&m) || users(m).iter().any(|u| !member_set.contains(u)))
            .collect();
        for (j, &o) in outs.iter().enumerate() {
            sub.set_output(format!("out{j}"), map[&o]);
        }
        if !loops::supported(&sub) {
            return Ok(None);
        }
        let kernel = loops::compile(jit, &sub, syms)?;
        stages.push(Stage::Loop {
            kernel,
            inputs,
            outputs: outs,
        });
    }
    Ok(Some(stages))
}

impl JitGraph {
    /// Plan (and compile) every kernel at the given sizes; one line per kernel saying how
    /// it runs. This is `dlc compile --emit plan`.
    pub fn plan_all(&mut self, syms: &HashMap<String, usize>) -> Result<Vec<String>, String> {
        let mut kernels: Vec<(u32, crate::ops::KernelKind, NodeId)> = Vec::new();
        for n in self.graph.schedule() {
            if let Op::Fused { body, kind, .. } = self.graph.node(n).op
                && !kernels.iter().any(|(b, _, _)| *b == body)
            {
                kernels.push((body, kind, n));
            }
        }
        // In a scan's body, a captured operand (`cap{k}`) is the same at every step.
        let captured = |g: &Graph, k: usize, n: NodeId| {
            g.inputs(n).get(k).is_some_and(
                |&i| matches!(&g.node(i).op, Op::Input { name, .. } if name.starts_with("cap")),
            )
        };
        let mut lines = Vec::new();
        for (body, kind, node) in kernels {
            let b_input = match self.plan(body, syms)? {
                Plan::MatMul {
                    b: Operand::Input(k),
                    ..
                } => Some(*k),
                _ => None,
            };
            let packed = b_input.is_some_and(|k| captured(&self.graph, k, node))
                && super::packed::available();
            let how = match self.plan(body, syms)? {
                Plan::Loop(k) if !k.splittable => format!(
                    "native row kernel (reductions in JIT code), {} inputs, outputs {:?}",
                    k.inputs, k.outputs
                ),
                Plan::Loop(k) => {
                    format!("native loop, {} inputs, outputs {:?}", k.inputs, k.outputs)
                }
                Plan::MatMul {
                    ta,
                    tb,
                    epilogue,
                    panels,
                    path,
                    ..
                } => format!(
                    "matmul (ta={ta}, tb={tb}) by {}{}",
                    match path {
                        _ if packed => "the AVX2 kernel on B packed once per scan run",
                        GemmPath::Jit => "the JIT's F32X4 micro-kernel",
                        GemmPath::Crate => "the gemm crate",
                    },
                    match (epilogue, panels) {
                        (None, _) => "",
                        (Some(_), true) => " + native epilogue per row panel",
                        (Some(_), false) => " + native epilogue loop after the product",
                    }
                ),
                Plan::Staged(st) if native_stages(st) => {
                    let loops = st
                        .iter()
                        .filter(|x| matches!(x, Stage::Loop { .. }))
                        .count();
                    format!(
                        "staged: {loops} native loops around {} native reductions",
                        st.len() - loops
                    )
                }
                Plan::Staged(st) => {
                    let loops = st
                        .iter()
                        .filter(|x| matches!(x, Stage::Loop { .. }))
                        .count();
                    format!(
                        "staged: {loops} native loops around {} reductions (reductions by the reference semantics)",
                        st.len() - loops
                    )
                }
                Plan::Window {
                    core,
                    epilogue,
                    panels,
                    ..
                } => format!(
                    "native {:?} {:?} → {:?}{}",
                    core.op,
                    core.geo.show(),
                    core.out,
                    match (epilogue, panels) {
                        (None, _) => "",
                        (Some(_), true) => " + native epilogue per image",
                        (Some(_), false) => " + native epilogue loop after the op",
                    }
                ),
                Plan::Copy { op, out, .. } => format!("native {} → {out:?}", op.name()),
                Plan::Interpret => {
                    "reference interpreter (no code generator for this kernel yet)".to_string()
                }
            };
            lines.push(format!("kernel body={body} kind={}: {how}", kind.name()));
        }
        for body in self.scan_bodies() {
            let sub = self.scan_graph(body)?;
            lines.push(format!("scan body={body}: its step runs"));
            for l in sub.plan_all(syms)? {
                lines.push(format!("  {l}"));
            }
        }
        Ok(lines)
    }

    /// The bodies of the scans the graph runs, in schedule order.
    fn scan_bodies(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for n in self.graph.schedule() {
            if let Op::Scan { body, .. } = self.graph.node(n).op
                && !out.contains(&body)
            {
                out.push(body);
            }
        }
        out
    }

    /// The compiled graph of a scan's body (compiled on first use).
    pub(super) fn scan_graph(&mut self, body: u32) -> Result<&mut JitGraph, String> {
        if !self.scans.contains_key(&body) {
            let g = self.graph.bodies[body as usize].clone();
            self.scans.insert(body, JitGraph::new(g, self.threads)?);
        }
        Ok(self.scans.get_mut(&body).expect("compiled above"))
    }

    /// Kernels the reference interpreter runs or stages at these sizes: kernels planned
    /// as staged or interpreted, and ops left outside any kernel that compute something
    /// (as in an unoptimized graph). 0 when every kernel of a step is native.
    pub fn interpreted_kernels(&mut self, syms: &HashMap<String, usize>) -> Result<usize, String> {
        let mut bodies = std::collections::BTreeSet::new();
        for n in self.graph.schedule() {
            if let Op::Fused { body, .. } = self.graph.node(n).op {
                bodies.insert(body);
            }
        }
        let mut slow = 0;
        let mut in_scans = 0;
        for body in self.scan_bodies() {
            in_scans += crate::opt::fuse::kernel_count(&self.graph.bodies[body as usize]);
            slow += self.scan_graph(body)?.interpreted_kernels(syms)?;
        }
        let loose = crate::opt::fuse::kernel_count(&self.graph) - bodies.len() - in_scans;
        for b in bodies {
            match self.plan(b, syms)? {
                Plan::Staged(st) if native_stages(st) => {}
                Plan::Staged(_) | Plan::Interpret => slow += 1,
                _ => {}
            }
        }
        Ok(loose + slow)
    }

    /// (fully native, planned) kernels: loops and matmuls count; staged kernels (whose
    /// reductions run by the reference semantics) and interpreted ones do not.
    pub fn native_kernels(&self) -> (usize, usize) {
        let all = || self.plans.values().flat_map(|m| m.values());
        let native = all()
            .filter(|p| {
                matches!(
                    p,
                    Plan::Loop(_) | Plan::MatMul { .. } | Plan::Window { .. } | Plan::Copy { .. }
                ) || matches!(p, Plan::Staged(st) if native_stages(st))
            })
            .count();
        (native, all().count())
    }

    pub(super) fn plan(
        &mut self,
        body_id: u32,
        syms: &HashMap<String, usize>,
    ) -> Result<&Plan, String> {
        let key = sym_key(syms);
        if !self
            .plans
            .get(&key)
            .is_some_and(|m| m.contains_key(&body_id))
        {
            let body = &self.graph.bodies[body_id as usize];
            let plan = if loops::supported(body) {
                Plan::Loop(loops::compile(&mut self.jit, body, syms)?)
            } else if let Some((node, operands, _)) = split_core(body, super::copy::supported)
                .filter(|(n, _, _)| body.outputs.len() == 1 && body.outputs[0].1 == *n)
            {
                Plan::Copy {
                    op: body.node(node).op.clone(),
                    operands,
                    out: loops::concrete(&body.ty(node).shape, syms)?,
                }
            } else if let Some((node, operands, epi)) = split_core(body, Op::is_window) {
                let mut shapes = Vec::new();
                for o in &operands {
                    shapes.push(match o {
                        Operand::Input(k) => input_shape(body, *k, syms)?,
                        Operand::Const(c) => c.shape().to_vec(),
                    });
                }
                let out = loops::concrete(&body.ty(node).shape, syms)?;
                let core = WindowCore::new(&body.node(node).op, &shapes, &out)
                    .ok_or("internal: a window op of unexpected rank")?;
                let trivial = body.outputs.len() == 1 && body.outputs[0].1 == node;
                if trivial {
                    Plan::Window {
                        core,
                        operands,
                        epilogue: None,
                        panels: false,
                    }
                } else if loops::supported(&epi) {
                    let k = loops::compile(&mut self.jit, &epi, syms)?;
                    let per_image = core.out_len / core.images().max(1);
                    let panels = core.per_image()
                        && per_image % 4 == 0
                        && k.outputs
                            .iter()
                            .all(|s| s.iter().product::<usize>() == core.out_len);
                    Plan::Window {
                        core,
                        operands,
                        epilogue: Some(k),
                        panels,
                    }
                } else {
                    Plan::Interpret
                }
            } else if let Some((a, b, ta, tb, epi)) = split_matmul(body) {
                let trivial = body.outputs.len() == 1
                    && matches!(body.node(body.outputs[0].1).op, Op::MatMul { .. });
                let shape = |o: &Operand| match o {
                    Operand::Input(k) => input_shape(body, *k, syms),
                    Operand::Const(c) => Ok(c.shape().to_vec()),
                };
                let (ar, ac) = rows_cols(&shape(&a)?);
                let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
                let (br, bc) = rows_cols(&shape(&b)?);
                let n = if tb { br } else { bc };
                let path = sgemm::choose(m, n, k);
                if trivial {
                    Plan::MatMul {
                        a,
                        b,
                        ta,
                        tb,
                        epilogue: None,
                        panels: false,
                        path,
                    }
                } else if loops::supported(&epi) {
                    let k = loops::compile(&mut self.jit, &epi, syms)?;
                    Plan::MatMul {
                        a,
                        b,
                        ta,
                        tb,
                        panels: k.outputs.iter().all(|s| s[..] == [m, n]),
                        epilogue: Some(k),
                        path,
                    }
                } else {
                    Plan::Interpret
                }
            } else if rows::supported(body) {
                Plan::Loop(rows::compile(&mut self.jit, body, syms)?)
            } else if let Some(split) = split_full_reductions(body).filter(rows::supported) {
                Plan::Loop(rows::compile(&mut self.jit, &split, syms)?)
            } else if let Some((flat, sizes)) = flatten_leading(body, syms)
                .or_else(|| rows_of_known(body, syms))
                .filter(|(f, _)| rows::supported(f))
            {
                let mut k = rows::compile(&mut self.jit, &flat, &sizes)?;
                // Same elements, in the shapes the graph gives them.
                k.outputs = body
                    .outputs
                    .iter()
                    .map(|(_, n)| loops::concrete(&body.ty(*n).shape, syms))
                    .collect::<Result<_, _>>()?;
                Plan::Loop(k)
            } else {
                match stage(&mut self.jit, body, syms)? {
                    Some(stages) => Plan::Staged(stages),
                    None => Plan::Interpret,
                }
            };
            self.plans
                .entry(key.clone())
                .or_default()
                .insert(body_id, plan);
        }
        Ok(&self.plans[&key][&body_id])
    }
}
