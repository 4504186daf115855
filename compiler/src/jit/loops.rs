//! Loop kernels: an elementwise kernel body (any broadcasting pattern, several outputs of
//! several shapes) compiled by Cranelift into one function
//! `fn(ptrs: *const *mut f32, seed: u64, step: u64, from: u64, to: u64, of: u64, rows: u64)`,
//! where `ptrs` holds the kernel's input buffers then its output buffers, all contiguous
//! row-major f32, the call computes the fraction [from/of, to/of) of every output, and
//! `rows` is the global row of the batch's first row (`Env::row_offset`, for random draws).
//!
//! Outputs of the same shape are computed in one loop, sharing subexpressions (the Adam
//! update of a parameter reads the gradient once and writes p, m and v in one pass).
//! Scalar subexpressions are computed once before the loop. Operands of another shape
//! are read through their broadcast index.

use super::Jit;
use super::emit::{Gen, LANES, begin, entry, finish, numel};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::{DType, Dim};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use std::collections::{BTreeMap, HashMap};

/// `fn(ptrs, seed, step, from, to, of, rows)`: computes elements [⌊len·from/of⌋₄, ⌊len·to/of⌋₄)
/// of every output of `len` elements, where ⌊·⌋₄ rounds down to a multiple of the vector
/// width inside the vector range and `to == of` means the end. Calls with disjoint
/// fractions write disjoint slices (threads run them at once; any split gives the same
/// bits, as every element is computed the same way). Thread `p` of `n` calls `(p, p+1, n)`;
/// a matmul epilogue calls `(r0, r1, m)` for rows [r0, r1) of an [m, n] product: exactly
/// those rows when `n·r0` and `n·r1` are multiples of 4.
pub type KernelFn = unsafe extern "C" fn(*const *mut f32, u64, u64, u64, u64, u64, u64);

/// A compiled loop kernel.
pub struct LoopKernel {
    pub f: KernelFn,
    pub inputs: usize,
    /// Shape of every output, in order.
    pub outputs: Vec<Vec<usize>>,
    /// (output, input) pairs that may be given the same buffer (see [`aliasable`]).
    pub aliasable: Vec<(usize, usize)>,
    /// Whether calls may compute slices of the outputs (`from`, `to`, `of`); a kernel that
    /// reduces across its rows runs whole.
    pub splittable: bool,
    /// Inline `exp`, `log`, `tanh` and `sigmoid` polynomials per element (an LSTM's gate
    /// loop has five): such a loop is worth splitting across threads at fewer elements.
    pub transcendentals: usize,
}

/// How a loop kernel handles an op: `None` if it cannot, else whether the op also runs
/// four elements at a time in the vector loop (the others run lane by lane, so their
/// segment stays scalar). One table for both questions. `exp`, `log`, `tanh` and
/// `sigmoid` are inline polynomials (`math.rs`) in both loops; `pow` calls `f32::powf`
/// lane by lane.
pub(super) fn loop_op(op: &Op) -> Option<bool> {
    use Op::*;
    Some(match op {
        Input { .. }
        | Neg
        | Exp
        | Log
        | Sqrt
        | Tanh
        | Sigmoid
        | Relu
        | Abs
        | StopGradient
        | Cast(DType::F32) => true,
        Add | Sub | Mul | Div | Pow | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne | Select => {
            true
        }
        Broadcast { .. } | Reshape { .. } => true,
        Const { shape, .. } if shape.iter().product::<usize>() == 1 => true,
        Sign | Cast(DType::I32) | OneHot { .. } | Random { .. } => false,
        _ => return None,
    })
}

/// Whether every op of a body can be compiled into a loop kernel.
pub fn supported(body: &Graph) -> bool {
    body.schedule()
        .into_iter()
        .all(|n| loop_op(&body.node(n).op).is_some())
}

pub(super) fn concrete(shape: &[Dim], syms: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Ok(*k),
            Dim::Sym(s) => syms
                .get(s)
                .copied()
                .ok_or_else(|| format!("size of {s} unknown")),
        })
        .collect()
}

/// Vectors per iteration of the main vector loop.
const UNROLL: usize = 2;

/// A kernel body's schedule, concrete shapes, inputs (node → operand index) and outputs.
pub(super) struct Io {
    pub(super) order: Vec<NodeId>,
    pub(super) shapes: HashMap<NodeId, Vec<usize>>,
    pub(super) input_of: HashMap<NodeId, usize>,
    pub(super) n_inputs: usize,
    pub(super) outs: Vec<NodeId>,
}

impl Io {
    pub(super) fn of(body: &Graph, syms: &HashMap<String, usize>) -> Result<Io, String> {
        let order = body.schedule();
        let mut shapes = HashMap::new();
        for &n in &order {
            shapes.insert(n, concrete(&body.ty(n).shape, syms)?);
        }
        let mut input_of = HashMap::new();
        let mut n_inputs = 0;
        // Every input counts, used or not: the caller passes one buffer per kernel operand.
        for n in body.g.node_indices() {
            if let Op::Input { name, .. } = &body.node(n).op {
                let k: usize = name
                    .strip_prefix("in")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("kernel input `{name}`"))?;
                input_of.insert(n, k);
                n_inputs = n_inputs.max(k + 1);
            }
        }
        let outs: Vec<NodeId> = (0..body.outputs.len())
            .map(|j| {
                body.output(&format!("out{j}"))
                    .ok_or_else(|| format!("kernel has no out{j}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Io {
            order,
            shapes,
            input_of,
            n_inputs,
            outs,
        })
    }
}

/// Compile a body whose ops all pass [`supported`], at the given symbolic sizes.
pub fn compile(
    jit: &mut Jit,
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Result<LoopKernel, String> {
    let Io {
        order,
        shapes,
        input_of,
        n_inputs,
        outs,
    } = Io::of(body, syms)?;
    let alias = aliasable(body, &outs, &input_of, &shapes)?;

    let (fid, name, math) = begin(jit)?;
    {
        let mut b = FunctionBuilder::new(&mut jit.ctx.func, &mut jit.fctx);
        let (p, in_ptr, out_ptr) = entry(&mut b, n_inputs, outs.len());
        let (seed, step, from, to, of) = (p[1], p[2], p[3], p[4], p[5]);
        let rows = p[6];
        let mut g = Gen::new(
            &mut jit.module,
            &mut b,
            &math,
            body,
            shapes,
            input_of,
            in_ptr,
            (seed, step, rows),
        );
        // Scalars once, up front, with the reciprocals of those that divide values of the
        // loops.
        g.hoist_scalars(&mut b, &order, |_| true)?;
        for &n in &order {
            if matches!(body.node(n).op, Op::Div) && numel(&g.shapes[&n]) > 1 {
                let d = body.inputs(n)[1];
                if let Some(&v) = g.hoisted.get(&d)
                    && !g.recips.contains_key(&d)
                {
                    let one = b.ins().f32const(1.0);
                    let r = b.ins().fdiv(one, v);
                    let slot = Gen::splat_slot(&mut b, r);
                    g.recips.insert(d, slot);
                }
            }
        }
        // One loop per output shape.
        let mut by_shape: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
        for (j, &o) in outs.iter().enumerate() {
            by_shape.entry(g.shapes[&o].clone()).or_default().push(j);
        }
        for (shape, js) in by_shape {
            let n = numel(&shape);
            g.loop_shape = shape.clone();
            let vec_ok = n >= LANES && js.iter().all(|&j| g.vectorizable(outs[j]));
            let split = if vec_ok { n - n % LANES } else { 0 };
            // This call's slice of the vector range [0, split): [⌊len·from/of⌋₄, ⌊len·to/of⌋₄),
            // or up to `split` for the last slice (`to == of`), which also runs the
            // scalar tail [split, n).
            let last = b.ins().icmp(IntCC::Equal, to, of);
            let at = |b: &mut FunctionBuilder, x: Value, align: i64| {
                let v = b.ins().imul_imm_s(x, n as i64);
                let v = b.ins().udiv(v, of);
                b.ins().band_imm_s(v, !(align - 1))
            };
            if split > 0 {
                let lo = at(&mut b, from, LANES as i64);
                let hi = at(&mut b, to, LANES as i64);
                let end = b.ins().iconst(types::I64, split as i64);
                let hi = b.ins().select(last, end, hi);
                g.vec = true;
                // Two vectors per iteration (independent chains keep the divider and the
                // square root busy), then one at a time for what is left.
                let len = b.ins().isub(hi, lo);
                let whole = b.ins().band_imm_s(len, !((UNROLL * LANES) as i64 - 1));
                let mid = b.ins().iadd(lo, whole);
                emit_loop(&mut b, &mut g, lo, mid, UNROLL, &js, &outs, &out_ptr)?;
                emit_loop(&mut b, &mut g, mid, hi, 1, &js, &outs, &out_ptr)?;
                g.vec = false;
            }
            if split < n {
                let (lo, hi) = if split > 0 {
                    let s = b.ins().iconst(types::I64, split as i64);
                    let e = b.ins().iconst(types::I64, n as i64);
                    (b.ins().select(last, s, e), e)
                } else {
                    let lo = at(&mut b, from, 1);
                    let hi = at(&mut b, to, 1);
                    let e = b.ins().iconst(types::I64, n as i64);
                    (lo, b.ins().select(last, e, hi))
                };
                emit_loop(&mut b, &mut g, lo, hi, 1, &js, &outs, &out_ptr)?;
            }
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(jit.module.target_config());
    }
    let f = finish(jit, fid, name)?;
    let out_shapes = outs
        .iter()
        .map(|o| g_shape(body, *o, syms))
        .collect::<Result<_, _>>()?;
    let transcendentals = body
        .schedule()
        .into_iter()
        .filter(|&n| matches!(body.node(n).op, Op::Exp | Op::Log | Op::Tanh | Op::Sigmoid))
        .count();
    Ok(LoopKernel {
        f,
        inputs: n_inputs,
        aliasable: alias,
        splittable: true,
        outputs: out_shapes,
        transcendentals,
    })
}

/// (output, input) pairs that may share one buffer: the input has the output's shape
/// and every output that reads it has that shape too, so it is read only at the index
/// being written, and only in the loop that writes it, before the store.
fn aliasable(
    body: &Graph,
    outs: &[NodeId],
    input_of: &HashMap<NodeId, usize>,
    shapes: &HashMap<NodeId, Vec<usize>>,
) -> Result<Vec<(usize, usize)>, String> {
    let cones: Vec<std::collections::HashSet<NodeId>> = outs
        .iter()
        .map(|&o| {
            let mut seen = std::collections::HashSet::new();
            let mut stack = vec![o];
            while let Some(m) = stack.pop() {
                if seen.insert(m) {
                    stack.extend(body.inputs(m));
                }
            }
            seen
        })
        .collect();
    let mut pairs = Vec::new();
    let mut inputs: Vec<(&NodeId, &usize)> = input_of.iter().collect();
    inputs.sort_by_key(|(_, j)| **j);
    for (n, &j) in inputs {
        // Inputs the body does not read have no shape here.
        let Some(shape) = shapes.get(n) else { continue };
        let readers: Vec<usize> = (0..outs.len()).filter(|&k| cones[k].contains(n)).collect();
        if readers.iter().all(|&k| shapes[&outs[k]] == *shape) {
            pairs.extend(readers.iter().map(|&k| (k, j)));
        }
    }
    Ok(pairs)
}

/// `for i in (start..end).step_by(lanes)`: compute and store the outputs `js`.
#[allow(clippy::too_many_arguments)]
fn emit_loop(
    b: &mut FunctionBuilder,
    g: &mut Gen,
    start: Value,
    end: Value,
    unroll: usize,
    js: &[usize],
    outs: &[NodeId],
    out_ptr: &[Value],
) -> Result<(), String> {
    let width = if g.vec { LANES } else { 1 };
    let step = width * unroll;
    let header = b.create_block();
    let body_b = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, types::I64);
    b.ins().jump(header, &[start.into()]);
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, i, end);
    b.ins().brif(more, body_b, &[], exit, &[]);
    b.switch_to_block(body_b);
    g.splats.clear();
    for u in 0..unroll {
        let iu = if u == 0 {
            i
        } else {
            b.ins().iadd_imm_s(i, (u * width) as i64)
        };
        g.memo.clear();
        // Every value of this index first, then the stores: an output may share its
        // buffer with an input (an in-place update), which must be read before it is
        // overwritten.
        let mut vals = Vec::with_capacity(js.len());
        for &j in js {
            vals.push(g.emit(b, outs[j], iu)?);
        }
        let off = b.ins().imul_imm_s(iu, 4);
        for (&j, v) in js.iter().zip(vals) {
            let addr = b.ins().iadd(out_ptr[j], off);
            b.ins().store(MemFlagsData::trusted(), v, addr, 0);
        }
    }
    let next = b.ins().iadd_imm_s(i, step as i64);
    b.ins().jump(header, &[next.into()]);
    b.switch_to_block(exit);
    Ok(())
}

fn g_shape(body: &Graph, n: NodeId, syms: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    concrete(&body.ty(n).shape, syms)
}
