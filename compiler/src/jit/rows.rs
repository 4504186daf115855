//! Row kernels: kernel bodies whose reductions run over the rows of `[R, C]` values
//! (softmax cross-entropy with its gradient, bias gradients, row sums and maxima),
//! compiled by Cranelift into one function with the loop kernels' calling convention.
//!
//! `R` is the body's leading symbolic size (the batch). Every value is either *row-shaped*
//! (`[R]` or `[R, C]`: one row at a time) or *invariant* (no `R`). Reductions are of two
//! kinds:
//! - over the columns of each row (`sum`/`mean`/`max` along axis 1, `softmax`,
//!   `log_softmax`): computed per row by an inner loop, before the values that use them;
//! - over the rows (`sum`/`mean`/`max` along axis 0, `sum_to` an invariant shape):
//!   accumulated row after row into a stack buffer (rows in order, so the result does not
//!   depend on threads), ready after the pass over the rows.
//!
//! A value that needs a finished row reduction is computed in a later pass over the rows
//! (its *level*), so the kernel makes as many passes as the body has nested row
//! reductions (softmax cross-entropy: two). Elementwise values are recomputed where they
//! are used rather than stored. Invariant outputs are computed at the end.

use super::Jit;
use super::emit::{Gen, LANES, begin, entry, finish, numel};
use super::loops::{self, Io, LoopKernel};
use super::math;
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::Dim;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value, types,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Red {
    Sum,
    Mean,
    Max,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// An elementwise op of the loop kernels.
    Elem,
    /// Over the columns of each row: one value per row.
    Row(Red),
    /// `softmax` / `log_softmax` along the columns of each row.
    Softmax,
    /// Over the rows: one value per column.
    Batch(Red),
}

/// The leading symbolic size every reduction's operand starts with, if there is one.
fn row_sym(body: &Graph) -> Option<String> {
    let mut sym = None;
    for n in body.schedule() {
        if body.node(n).op.is_reduction() {
            let x = body.inputs(n)[0];
            let Some(Dim::Sym(s)) = body.ty(x).shape.first() else {
                return None;
            };
            if sym.get_or_insert_with(|| s.clone()) != s {
                return None;
            }
        }
    }
    sym
}

fn is_row(body: &Graph, n: NodeId, row: &str) -> bool {
    matches!(body.ty(n).shape.first(), Some(Dim::Sym(s)) if s == row)
}

fn kind(body: &Graph, n: NodeId, row: &str) -> Option<Kind> {
    let op = &body.node(n).op;
    if !op.is_reduction() {
        return loops::loop_op(op).map(|_| Kind::Elem);
    }
    let x = body.inputs(n)[0];
    let xs = &body.ty(x).shape;
    if !is_row(body, x, row) || xs.len() > 2 {
        return None;
    }
    let red = |op: &Op| match op {
        Op::Sum { .. } | Op::SumTo { .. } => Red::Sum,
        Op::Mean { .. } => Red::Mean,
        _ => Red::Max,
    };
    match op {
        Op::Sum { axes, .. } | Op::Mean { axes, .. } | Op::Max { axes, .. } => match axes[..] {
            [1] if xs.len() == 2 => Some(Kind::Row(red(op))),
            [0] => Some(Kind::Batch(red(op))),
            _ => None,
        },
        Op::SumTo { shape } => {
            let non1 = |d: &&Dim| **d != Dim::Known(1);
            let same = shape.iter().filter(non1).eq(xs[1..].iter().filter(non1));
            (same && !shape.iter().any(|d| *d == Dim::Sym(row.to_string())))
                .then_some(Kind::Batch(Red::Sum))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } if *axis == 1 && xs.len() == 2 => {
            Some(Kind::Softmax)
        }
        _ => None,
    }
}

/// Whether a body with reductions can be compiled as a row kernel.
pub fn supported(body: &Graph) -> bool {
    let Some(row) = row_sym(body) else {
        return false;
    };
    let rs = Dim::Sym(row.clone());
    body.schedule().into_iter().all(|n| {
        let shape = &body.ty(n).shape;
        let placed = if is_row(body, n, &row) {
            shape.len() <= 2 && !shape[1..].contains(&rs)
        } else {
            !shape.contains(&rs)
        };
        placed && kind(body, n, &row).is_some()
    })
}

/// A loop `for i in 0..n` carrying `accs`; `f` gets the index and the accumulators and
/// returns their next values. Returns the accumulators after the loop.
fn counted(
    b: &mut FunctionBuilder,
    n: usize,
    accs: &[Value],
    f: impl FnMut(&mut FunctionBuilder, Value, &[Value]) -> Result<Vec<Value>, String>,
) -> Result<Vec<Value>, String> {
    span(b, 0, n, 1, accs, f)
}

/// `for i in (from..to).step_by(step)` carrying `accs` (of any types).
fn span(
    b: &mut FunctionBuilder,
    from: usize,
    n: usize,
    step: usize,
    accs: &[Value],
    mut f: impl FnMut(&mut FunctionBuilder, Value, &[Value]) -> Result<Vec<Value>, String>,
) -> Result<Vec<Value>, String> {
    let header = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, types::I64);
    for &a in accs {
        let t = b.func.dfg.value_type(a);
        b.append_block_param(header, t);
        b.append_block_param(exit, t);
    }
    let zero = b.ins().iconst(types::I64, from as i64);
    let args: Vec<_> = std::iter::once(zero)
        .chain(accs.iter().copied())
        .map(Into::into)
        .collect();
    b.ins().jump(header, &args);
    b.switch_to_block(header);
    let params = b.block_params(header).to_vec();
    let more = b
        .ins()
        .icmp_imm_u(IntCC::UnsignedLessThan, params[0], n as i64);
    let rest: Vec<_> = params[1..].iter().copied().map(Into::into).collect();
    b.ins().brif(more, body, &[], exit, &rest);
    b.switch_to_block(body);
    let next = f(b, params[0], &params[1..])?;
    let i1 = b.ins().iadd_imm_s(params[0], step as i64);
    let args: Vec<_> = std::iter::once(i1).chain(next).map(Into::into).collect();
    b.ins().jump(header, &args);
    b.switch_to_block(exit);
    Ok(b.block_params(exit).to_vec())
}

/// Columns per partial sum of a long row reduction.
const SUM_BLOCK: usize = 1024;

/// Forget values of the current loop body (they do not dominate what follows).
fn fresh(g: &mut Gen) {
    g.memo.clear();
    g.splats.clear();
}

/// A lane mask (as F32X4 bits) selecting the last `t` of the four lanes.
fn tail_mask(b: &mut FunctionBuilder, t: usize) -> Value {
    let zero = b.ins().iconst(types::I32, 0);
    let mut m = b.ins().splat(types::I32X4, zero);
    let ones = b.ins().iconst(types::I32, -1);
    for lane in LANES - t..LANES {
        m = b.ins().insertlane(m, ones, lane as u8);
    }
    b.ins().bitcast(
        types::F32X4,
        MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
        m,
    )
}

/// The four lanes of a vector combined into one.
fn horizontal(b: &mut FunctionBuilder, red: Red, v: Value) -> Value {
    let mut acc = b.ins().extractlane(v, 0);
    for lane in 1..LANES as u8 {
        let x = b.ins().extractlane(v, lane);
        acc = combine(b, red, acc, x);
    }
    acc
}

fn combine(b: &mut FunctionBuilder, red: Red, acc: Value, v: Value) -> Value {
    match red {
        Red::Max => b.ins().fmax(acc, v),
        _ => b.ins().fadd(acc, v),
    }
}

fn start(b: &mut FunctionBuilder, red: Red) -> Value {
    b.ins().f32const(if red == Red::Max {
        f32::NEG_INFINITY
    } else {
        0.0
    })
}

/// Compile a body that passes [`supported`] at the given sizes.
pub fn compile(
    jit: &mut Jit,
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Result<LoopKernel, String> {
    let row = row_sym(body).ok_or("not a row kernel")?;
    let r = *syms
        .get(&row)
        .ok_or_else(|| format!("size of {row} unknown"))?;
    let Io {
        order,
        shapes,
        input_of,
        n_inputs,
        outs,
    } = Io::of(body, syms)?;
    let mut kinds = HashMap::new();
    let mut level: HashMap<NodeId, usize> = HashMap::new();
    // Values that read no kernel input (constants, broadcast): the same in every row.
    let mut fixed: HashSet<NodeId> = HashSet::new();
    for &n in &order {
        let k = kind(body, n, &row).ok_or("not a row kernel")?;
        let ins = body.inputs(n);
        // A reduction over each row's columns is computed in the row loop even of a fixed
        // value: only reductions over the rows (`Batch`) of fixed values are evaluated up
        // front, outside the row loop, which cannot compute per-row reductions.
        if !matches!(body.node(n).op, Op::Input { .. } | Op::Random { .. })
            && !matches!(k, Kind::Row(_) | Kind::Softmax)
            && ins.iter().all(|i| fixed.contains(i))
        {
            fixed.insert(n);
        }
        let l = ins.iter().map(|i| level[i]).max().unwrap_or(0);
        // A reduction over rows of a fixed value is known up front (`sum` of a broadcast
        // 1 is R): it needs no pass of its own.
        let across = matches!(k, Kind::Batch(_)) && !fixed.contains(&n);
        level.insert(n, l + usize::from(across));
        kinds.insert(n, k);
    }
    let per_row = |n: NodeId| numel(&shapes[&n]) / r.max(1);
    let rowish = |n: NodeId| is_row(body, n, &row);

    let (fid, name, math) = begin(jit)?;
    {
        let mut b = FunctionBuilder::new(&mut jit.ctx.func, &mut jit.fctx);
        // Row kernels run whole: `from`, `to` and `of` are not read.
        let (p, in_ptr, out_ptr) = entry(&mut b, n_inputs, outs.len());
        let (seed, step, rows) = (p[1], p[2], p[6]);
        let mut g = Gen::new(
            &mut jit.module,
            &mut b,
            &math,
            body,
            shapes.clone(),
            input_of,
            in_ptr,
            (seed, step, rows),
        );
        // Scalars once, up front (not the results of reductions).
        g.hoist_scalars(&mut b, &order, |n| kinds[&n] == Kind::Elem)?;
        let flags = MemFlagsData::trusted();
        // A row of exp(x - max) per (log-)softmax operand x.
        let mut row_buf: HashMap<NodeId, Value> = HashMap::new();
        for &n in &order {
            if kinds[&n] == Kind::Softmax {
                let x = body.inputs(n)[0];
                if let std::collections::hash_map::Entry::Vacant(e) = row_buf.entry(x) {
                    let slot = b.create_sized_stack_slot(StackSlotData::new(
                        StackSlotKind::ExplicitSlot,
                        (4 * per_row(x).max(1)) as u32,
                        4,
                    ));
                    e.insert(b.ins().stack_addr(types::I64, slot, 0));
                }
            }
        }
        // A stack buffer per reduction over the rows, set to its starting value.
        let mut acc_buf: HashMap<NodeId, Value> = HashMap::new();
        for &n in &order {
            if let Kind::Batch(red) = kinds[&n] {
                let c = numel(&shapes[&n]);
                let slot = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    (4 * c.max(1)) as u32,
                    4,
                ));
                let addr = b.ins().stack_addr(types::I64, slot, 0);
                if fixed.contains(&n) {
                    // The value of row 0, times R for a sum.
                    let x = body.inputs(n)[0];
                    let times = b
                        .ins()
                        .f32const(if red == Red::Sum { r as f32 } else { 1.0 });
                    counted(&mut b, c, &[], |b, i, _| {
                        fresh(&mut g);
                        g.loop_shape = shapes[&x].clone();
                        let v = g.emit(b, x, i)?;
                        let v = b.ins().fmul(v, times);
                        let off = b.ins().imul_imm_s(i, 4);
                        let a = b.ins().iadd(addr, off);
                        b.ins().store(flags, v, a, 0);
                        fresh(&mut g);
                        Ok(vec![])
                    })?;
                    g.mem.insert(n, addr);
                } else {
                    let init = start(&mut b, red);
                    counted(&mut b, c, &[], |b, i, _| {
                        let off = b.ins().imul_imm_s(i, 4);
                        let a = b.ins().iadd(addr, off);
                        b.ins().store(flags, init, a, 0);
                        Ok(vec![])
                    })?;
                }
                acc_buf.insert(n, addr);
            }
        }
        let max_level = level.values().copied().max().unwrap_or(0);
        for pass in 0..=max_level {
            // What this pass over the rows produces: row-shaped outputs of its level, and
            // the reductions over rows of the next level (from their operands).
            // Each target once, with the outputs it is stored to.
            let mut targets: Vec<(NodeId, Vec<usize>)> = Vec::new();
            let mut add = |t: NodeId, j: Option<usize>| {
                let at = match targets.iter().position(|x| x.0 == t) {
                    Some(at) => at,
                    None => {
                        targets.push((t, Vec::new()));
                        targets.len() - 1
                    }
                };
                targets[at].1.extend(j);
            };
            for (j, &o) in outs.iter().enumerate() {
                if rowish(o) && level[&o] == pass {
                    add(o, Some(j));
                }
            }
            let batches: Vec<NodeId> = order
                .iter()
                .copied()
                .filter(|n| {
                    matches!(kinds[n], Kind::Batch(_)) && !fixed.contains(n) && level[n] == pass + 1
                })
                .collect();
            for &n in &batches {
                add(body.inputs(n)[0], None);
            }
            if targets.is_empty() {
                continue;
            }
            // Reductions along rows these need, in schedule order.
            let mut needed: HashSet<NodeId> = HashSet::new();
            let mut stack: Vec<NodeId> = targets.iter().map(|t| t.0).collect();
            while let Some(m) = stack.pop() {
                if matches!(kinds[&m], Kind::Batch(_)) || !needed.insert(m) {
                    continue;
                }
                stack.extend(body.inputs(m));
            }
            let row_reds: Vec<NodeId> = order
                .iter()
                .copied()
                .filter(|n| needed.contains(n) && matches!(kinds[n], Kind::Row(_) | Kind::Softmax))
                .collect();
            // Targets grouped by their per-row length: one inner loop per group.
            let mut groups: BTreeMap<usize, Vec<(NodeId, Vec<usize>)>> = BTreeMap::new();
            for t in &targets {
                groups.entry(per_row(t.0)).or_default().push(t.clone());
            }
            g.rowvals.clear();
            g.rowstats.clear();
            g.rowexp.clear();
            counted(&mut b, r, &[], |b, ri, _| {
                let mut stats: HashMap<NodeId, (Value, Value)> = HashMap::new();
                let mut exps: HashMap<NodeId, (Value, Value)> = HashMap::new();
                for &n in &row_reds {
                    let x = body.inputs(n)[0];
                    let c = per_row(x);
                    g.loop_shape = shapes[&x].clone();
                    g.rc_shape = shapes[&x].clone();
                    let base = b.ins().imul_imm_s(ri, c as i64);
                    // Four columns at a time while the operand allows, then one at a time.
                    let c4 = if c >= LANES && g.vectorizable(x) {
                        c - c % LANES
                    } else {
                        0
                    };
                    let reduce = |b: &mut FunctionBuilder,
                                  g: &mut Gen,
                                  red: Red,
                                  shift: Option<(Value, Value)>|
                     -> Result<Value, String> {
                        let step = |b: &mut FunctionBuilder,
                                    g: &mut Gen,
                                    ci: Value,
                                    acc: Value|
                         -> Result<Value, String> {
                            fresh(g);
                            let idx = b.ins().iadd(base, ci);
                            g.rc = Some((ri, ci));
                            let v = g.emit(b, x, idx)?;
                            let v = match shift {
                                Some((m, row)) => {
                                    let m = if g.vec {
                                        b.ins().splat(types::F32X4, m)
                                    } else {
                                        m
                                    };
                                    let d = b.ins().fsub(v, m);
                                    let e = math::exp(b, d);
                                    // Kept for the row's softmax values.
                                    let off = b.ins().imul_imm_s(ci, 4);
                                    let a = b.ins().iadd(row, off);
                                    b.ins().store(MemFlagsData::trusted(), e, a, 0);
                                    e
                                }
                                None => v,
                            };
                            Ok(combine(b, red, acc, v))
                        };
                        let acc = start(b, red);
                        if c4 == 0 {
                            let a = span(b, 0, c, 1, &[acc], |b, ci, a| {
                                Ok(vec![step(b, g, ci, a[0])?])
                            })?;
                            fresh(g);
                            return Ok(a[0]);
                        }
                        g.vec = true;
                        let v0 = b.ins().splat(types::F32X4, acc);
                        // Long sums in blocks: each block's partial sum starts from zero,
                        // so the error grows with the block and the count of blocks, not
                        // with the length of the row (a gradient norm sums millions).
                        let mut blocked = if red == Red::Max {
                            0
                        } else {
                            c4 - c4 % SUM_BLOCK
                        };
                        let mut v = v0;
                        if blocked > SUM_BLOCK {
                            v = span(b, 0, blocked, SUM_BLOCK, &[v], |b, k, a| {
                                let zero = b.ins().splat(types::F32X4, acc);
                                let part = span(b, 0, SUM_BLOCK, LANES, &[zero], |b, j, p| {
                                    let ci = b.ins().iadd(k, j);
                                    Ok(vec![step(b, g, ci, p[0])?])
                                })?[0];
                                fresh(g);
                                Ok(vec![combine(b, red, a[0], part)])
                            })?[0];
                            fresh(g);
                        } else {
                            blocked = 0;
                        }
                        v = span(b, blocked, c4, LANES, &[v], |b, ci, a| {
                            Ok(vec![step(b, g, ci, a[0])?])
                        })?[0];
                        if c4 < c {
                            // The last four columns, without those already counted.
                            fresh(g);
                            let ci = b.ins().iconst(types::I64, (c - LANES) as i64);
                            let neutral = b.ins().splat(types::F32X4, acc);
                            let w = step(b, g, ci, neutral)?;
                            let mask = tail_mask(b, c - c4);
                            let w = b.ins().bitselect(mask, w, neutral);
                            v = combine(b, red, v, w);
                        }
                        g.vec = false;
                        fresh(g);
                        Ok(horizontal(b, red, v))
                    };
                    match kinds[&n] {
                        Kind::Row(red) => {
                            let mut v = reduce(b, &mut g, red, None)?;
                            if red == Red::Mean {
                                let k = b.ins().f32const(1.0 / c as f32);
                                v = b.ins().fmul(v, k);
                            }
                            g.rowvals.insert(n, Gen::spill_row_value(b, v));
                        }
                        _ if stats.contains_key(&x) => {
                            // softmax and log_softmax of one value share their statistics.
                            g.rowstats.insert(n, stats[&x]);
                            if let Some(&e) = exps.get(&x) {
                                g.rowexp.insert(n, e);
                            }
                        }
                        _ => {
                            // The row maximum (0 if infinite, as the reference does), then
                            // the log of the sum of exp(x - max).
                            let m = reduce(b, &mut g, Red::Max, None)?;
                            let a = b.ins().fabs(m);
                            let inf = b.ins().f32const(f32::INFINITY);
                            let is_inf = b.ins().fcmp(FloatCC::Equal, a, inf);
                            let zero = b.ins().f32const(0.0);
                            let m = b.ins().select(is_inf, zero, m);
                            let m = Gen::spill_row_value(b, m);
                            let row = row_buf[&x];
                            let s = reduce(b, &mut g, Red::Sum, Some((m, row)))?;
                            let ls = math::log(b, s);
                            let ls = Gen::spill_row_value(b, ls);
                            g.rowstats.insert(n, (m, ls));
                            stats.insert(x, (m, ls));
                            // softmax = exp(x - max) (kept above) / sum.
                            let one = b.ins().f32const(1.0);
                            let inv = b.ins().fdiv(one, s);
                            let inv = Gen::spill_row_value(b, inv);
                            exps.insert(x, (row, inv));
                            g.rowexp.insert(n, (row, inv));
                        }
                    }
                }
                for (&c, ts) in &groups {
                    let shape = shapes[&ts[0].0].clone();
                    let base = b.ins().imul_imm_s(ri, c as i64);
                    // `mask`: lanes to accumulate (the last, overlapping vector of a row).
                    let one =
                        |b: &mut FunctionBuilder, g: &mut Gen, ci: Value, mask: Option<Value>| {
                            fresh(g);
                            let idx = b.ins().iadd(base, ci);
                            g.rc = Some((ri, ci));
                            let mut vals = Vec::new();
                            for (t, _) in ts {
                                vals.push(g.emit(b, *t, idx)?);
                            }
                            let off = b.ins().imul_imm_s(idx, 4);
                            let coff = b.ins().imul_imm_s(ci, 4);
                            let ty = if g.vec { types::F32X4 } else { types::F32 };
                            for ((t, js), v) in ts.iter().zip(vals) {
                                for &j in js {
                                    let a = b.ins().iadd(out_ptr[j], off);
                                    b.ins().store(flags, v, a, 0);
                                }
                                for &n in batches.iter().filter(|&&n| body.inputs(n)[0] == *t) {
                                    let Kind::Batch(red) = kinds[&n] else {
                                        unreachable!()
                                    };
                                    let a = b.ins().iadd(acc_buf[&n], coff);
                                    let old = b.ins().load(ty, flags, a, 0);
                                    let new = combine(b, red, old, v);
                                    // Lanes outside the mask keep their old value, bit for bit.
                                    let new = match mask {
                                        Some(m) => b.ins().bitselect(m, new, old),
                                        None => new,
                                    };
                                    b.ins().store(flags, new, a, 0);
                                }
                            }
                            fresh(g);
                            Ok::<(), String>(())
                        };
                    g.loop_shape = shape.clone();
                    g.rc_shape = shape.clone();
                    let c4 = if c >= LANES && ts.iter().all(|(t, _)| g.vectorizable(*t)) {
                        c - c % LANES
                    } else {
                        0
                    };
                    if c4 > 0 {
                        g.vec = true;
                        span(b, 0, c4, LANES, &[], |b, ci, _| {
                            one(b, &mut g, ci, None)?;
                            Ok(vec![])
                        })?;
                        if c4 < c {
                            // The last four columns again: stores rewrite the same values;
                            // accumulations take only the new lanes.
                            let ci = b.ins().iconst(types::I64, (c - LANES) as i64);
                            let mask = tail_mask(b, c - c4);
                            one(b, &mut g, ci, Some(mask))?;
                        }
                        g.vec = false;
                    } else if c == 1 {
                        let zero = b.ins().iconst(types::I64, 0);
                        one(b, &mut g, zero, None)?;
                    } else {
                        span(b, 0, c, 1, &[], |b, ci, _| {
                            one(b, &mut g, ci, None)?;
                            Ok(vec![])
                        })?;
                    }
                }
                Ok(vec![])
            })?;
            g.rc = None;
            // Finish this level's reductions over rows; later passes read them.
            for &n in &batches {
                let addr = acc_buf[&n];
                if kinds[&n] == Kind::Batch(Red::Mean) {
                    // (0 rows: 0 · ∞ = NaN, the reference's 0 / 0.)
                    let k = b.ins().f32const(1.0 / r as f32);
                    counted(&mut b, numel(&shapes[&n]), &[], |b, i, _| {
                        let off = b.ins().imul_imm_s(i, 4);
                        let a = b.ins().iadd(addr, off);
                        let v = b.ins().load(types::F32, flags, a, 0);
                        let v = b.ins().fmul(v, k);
                        b.ins().store(flags, v, a, 0);
                        Ok(vec![])
                    })?;
                }
                g.mem.insert(n, addr);
            }
        }
        // Invariant outputs, from the finished reductions.
        for (j, &o) in outs.iter().enumerate() {
            if rowish(o) {
                continue;
            }
            let shape = shapes[&o].clone();
            counted(&mut b, numel(&shape), &[], |b, i, _| {
                fresh(&mut g);
                g.loop_shape = shape.clone();
                let v = g.emit(b, o, i)?;
                let off = b.ins().imul_imm_s(i, 4);
                let a = b.ins().iadd(out_ptr[j], off);
                b.ins().store(flags, v, a, 0);
                fresh(&mut g);
                Ok(vec![])
            })?;
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(jit.module.target_config());
    }
    let f = finish(jit, fid, name)?;
    Ok(LoopKernel {
        f,
        inputs: n_inputs,
        outputs: outs.iter().map(|o| shapes[o].clone()).collect(),
        aliasable: Vec::new(),
        splittable: false,
        transcendentals: 0,
    })
}
