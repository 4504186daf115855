//! The code generator of elementwise values, shared by loop kernels (`loops.rs`) and row
//! kernels (`rows.rs`): `Gen` emits the CLIF of a body's node at a flat index (or at a
//! (row, column) of a row kernel), as one f32 or as four lanes, with broadcasting by index
//! arithmetic; and the scaffolding of every kernel function (`begin`, `entry`, `finish`).

use super::loops::{KernelFn, loop_op};
use super::{Jit, math};
use crate::ir::{Graph, NodeId};
use crate::ops::{Dist, Op};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature, StackSlot, StackSlotData,
    StackSlotKind, UserFuncName, Value, types,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::HashMap;

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The code generator of elementwise bodies, shared with row kernels (`rows.rs`).
pub(super) struct Gen<'a> {
    pub(super) body: &'a Graph,
    pub(super) shapes: HashMap<NodeId, Vec<usize>>,
    pub(super) input_of: HashMap<NodeId, usize>,
    pub(super) in_ptr: Vec<Value>,
    pub(super) seed: Value,
    pub(super) step: Value,
    /// The global row of the batch's first row (`Env::row_offset`).
    pub(super) rows: Value,
    pub(super) pow: FuncRef,
    pub(super) normal: FuncRef,
    /// Row kernels: values of row reductions for the current row...
    pub(super) rowvals: HashMap<NodeId, Value>,
    /// ... the row maximum and log of the sum of exponentials of a (log-)softmax...
    pub(super) rowstats: HashMap<NodeId, (Value, Value)>,
    /// ... the row of exp(x - max) and 1/sum of a softmax...
    pub(super) rowexp: HashMap<NodeId, (Value, Value)>,
    /// ... and buffers holding finished batch reductions, read at the node's index.
    pub(super) mem: HashMap<NodeId, Value>,
    /// ... and the (row, column) of the element being computed, for values of shape
    /// `rc_shape` (`[R, C]`): broadcast operands and one-hot index by them, no division.
    pub(super) rc: Option<(Value, Value)>,
    pub(super) rc_shape: Vec<usize>,
    /// Values computed once before the loops (scalars)...
    pub(super) hoisted: HashMap<NodeId, Value>,
    /// ... and the stack slots the loops read them from (see [`Gen::hoist`]).
    pub(super) pinned: HashMap<NodeId, StackSlot>,
    /// The stack slot of 1/v of every hoisted scalar v of a loop kernel: dividing by a
    /// scalar becomes a multiplication.
    pub(super) recips: HashMap<NodeId, StackSlot>,
    /// Values at the loop index, for nodes of the loop's shape.
    pub(super) memo: HashMap<NodeId, Value>,
    pub(super) loop_shape: Vec<usize>,
    /// Emitting the F32X4 loop (four elements per iteration) rather than the scalar one.
    pub(super) vec: bool,
    /// Hoisted scalars splatted to vectors in the current loop.
    pub(super) splats: HashMap<NodeId, Value>,
    /// Per random key, the stack slot holding the hash of (seed, key, step), computed once
    /// before the loops (see [`Gen::uniform`]).
    pub(super) rng_prefix: HashMap<u32, StackSlot>,
}

/// Lanes of the vector loops: Cranelift's x64 backend has 128-bit vectors (DESIGN §6).
pub(super) const LANES: usize = 4;

/// `x / d` for a constant d: a shift when d is a power of two (a division otherwise).
fn udiv(b: &mut FunctionBuilder, x: Value, d: usize) -> Value {
    if d.is_power_of_two() {
        b.ins().ushr_imm_u(x, d.trailing_zeros() as i64)
    } else {
        b.ins().udiv_imm_u(x, d as i64)
    }
}

/// `x mod d` for a constant d: a mask when d is a power of two (a division otherwise).
fn urem(b: &mut FunctionBuilder, x: Value, d: usize) -> Value {
    if d.is_power_of_two() {
        b.ins().band_imm_s(x, d as i64 - 1)
    } else {
        b.ins().urem_imm_u(x, d as i64)
    }
}

pub(super) fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl Gen<'_> {
    /// Index into `to` (broadcast into `from`) of flat index `idx` of `from`.
    pub(super) fn map_idx(
        &self,
        b: &mut FunctionBuilder,
        idx: Value,
        from: &[usize],
        to: &[usize],
    ) -> Value {
        if from == to
            || numel(from) == numel(to)
                && to
                    .iter()
                    .filter(|&&d| d != 1)
                    .eq(from.iter().filter(|&&d| d != 1))
        {
            return idx;
        }
        if numel(to) == 1 {
            return b.ins().iconst(types::I64, 0);
        }
        if let (Some((r, c)), [rows, cols]) = (self.rc, from)
            && from == self.rc_shape.as_slice()
        {
            if to == [*cols] || to == [1, *cols] {
                return c;
            }
            if to == [*rows, 1] {
                return r;
            }
        }
        // A suffix of the shape (a bias along the last axes): idx mod its size.
        if to.len() <= from.len() && from[from.len() - to.len()..] == *to {
            return urem(b, idx, numel(to));
        }
        let (sf, st) = (strides(from), strides(to));
        let off = from.len() - to.len();
        let mut acc = b.ins().iconst(types::I64, 0);
        for (d, &t) in to.iter().enumerate() {
            if t == 1 {
                continue;
            }
            let q = udiv(b, idx, sf[d + off]);
            let c = urem(b, q, from[d + off]);
            let term = b.ins().imul_imm_s(c, st[d] as i64);
            acc = b.ins().iadd(acc, term);
        }
        acc
    }

    /// Whether `n`'s cone can run four elements at a time: every operand read at the
    /// same index, as a hoisted scalar, or as a suffix whose length is a multiple of 4.
    /// Whether a `to`-shaped operand of a `from`-shaped value is one value per row of a
    /// row kernel's `[R, C]` values (`[R, 1]`): the same across the lanes of a row.
    fn per_row(&self, from: &[usize], to: &[usize]) -> bool {
        matches!(from, [rows, cols] if *cols > 1 && to == [*rows, 1])
            && self.rc.is_some()
            && from == self.rc_shape.as_slice()
    }

    pub(super) fn vectorizable(&self, n: NodeId) -> bool {
        let mut stack = vec![n];
        let mut seen = std::collections::HashSet::new();
        while let Some(m) = stack.pop() {
            // Hoisted scalars and a row kernel's per-row values are splatted; finished
            // reductions are read from memory like inputs.
            if self.hoisted.contains_key(&m)
                || self.rowvals.contains_key(&m)
                || self.mem.contains_key(&m)
                || !seen.insert(m)
            {
                continue;
            }
            let from = &self.shapes[&m];
            // In a row kernel, a one-hot row reads its label once (a splat).
            let row_one_hot =
                matches!(self.body.node(m).op, Op::OneHot { .. }) && *from == self.rc_shape;
            let ok = loop_op(&self.body.node(m).op) == Some(true)
                || self.rowstats.contains_key(&m)
                || row_one_hot;
            if !ok {
                return false;
            }
            if row_one_hot {
                continue;
            }
            for c in self.body.inputs(m) {
                if self.rowvals.contains_key(&c) {
                    continue;
                }
                let to = &self.shapes[&c];
                // A per-row operand is computed as a scalar and splatted.
                if matches!(from[..], [rows, cols] if cols > 1 && to[..] == [rows, 1])
                    && *from == self.rc_shape
                {
                    continue;
                }
                // A row kernel reads a `[C]` operand of a `[R, C]` value at the column.
                if let [_, cols] = from[..]
                    && *from == self.rc_shape
                    && (to[..] == [cols] || to[..] == [1, cols])
                {
                    stack.push(c);
                    continue;
                }
                let same = numel(from) == numel(to)
                    && to
                        .iter()
                        .filter(|&&d| d != 1)
                        .eq(from.iter().filter(|&&d| d != 1));
                let suffix = to.len() <= from.len()
                    && from[from.len() - to.len()..] == **to
                    && numel(to).is_multiple_of(LANES);
                if numel(to) == 1 {
                    if !self.hoisted.contains_key(&c) && !self.mem.contains_key(&c) {
                        return false;
                    }
                } else if !same && !suffix {
                    return false;
                }
                stack.push(c);
            }
        }
        true
    }

    fn ty(&self) -> types::Type {
        if self.vec { types::F32X4 } else { types::F32 }
    }

    fn fconst(&self, b: &mut FunctionBuilder, v: f32) -> Value {
        let c = b.ins().f32const(v);
        if self.vec {
            b.ins().splat(types::F32X4, c)
        } else {
            c
        }
    }

    /// A float condition as 1.0 / 0.0 in the current width.
    fn cond_f32(&self, b: &mut FunctionBuilder, c: Value) -> Value {
        if self.vec {
            let one = b.ins().iconst(types::I32, 1.0f32.to_bits() as i64);
            let ones = b.ins().splat(types::I32X4, one);
            let m = b.ins().band(c, ones);
            b.ins().bitcast(
                types::F32X4,
                MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
                m,
            )
        } else {
            Self::bool_f32(b, c)
        }
    }

    /// Call a scalar function, lane by lane in the vector loop.
    pub(super) fn call_lanes(&self, b: &mut FunctionBuilder, f: FuncRef, args: &[Value]) -> Value {
        if !self.vec {
            let c = b.ins().call(f, args);
            return b.inst_results(c)[0];
        }
        let mut out = args[0];
        for lane in 0..LANES as u8 {
            let lanes: Vec<Value> = args.iter().map(|&a| b.ins().extractlane(a, lane)).collect();
            let c = b.ins().call(f, &lanes);
            let r = b.inst_results(c)[0];
            out = b.ins().insertlane(out, r, lane);
        }
        out
    }

    fn bool_f32(b: &mut FunctionBuilder, c: Value) -> Value {
        let one = b.ins().f32const(1.0);
        let zero = b.ins().f32const(0.0);
        b.ins().select(c, one, zero)
    }

    /// SplitMix64 finaliser, as in `rng.rs`.
    fn mix(b: &mut FunctionBuilder, z: Value) -> Value {
        let s = b.ins().ushr_imm_u(z, 30);
        let z = b.ins().bxor(z, s);
        let z = b.ins().imul_imm_s(z, 0xbf58_476d_1ce4_e5b9_u64 as i64);
        let s = b.ins().ushr_imm_u(z, 27);
        let z = b.ins().bxor(z, s);
        let z = b.ins().imul_imm_s(z, 0x94d0_49bb_1331_11eb_u64 as i64);
        let s = b.ins().ushr_imm_u(z, 31);
        b.ins().bxor(z, s)
    }

    /// U[0, 1) at element `idx` of the draws of `key` (`rng::uniform` in f32). The hash of
    /// (seed, key, step) is the same for every element: it is read from the stack slot
    /// that `hoist_scalars` filled before the loops (three of the four mixing rounds; as
    /// an instruction chain on constants, Cranelift would rematerialize it per element).
    /// An element's 64 random bits (`rng::bits`).
    fn bits(&self, b: &mut FunctionBuilder, key: u32, idx: Value) -> Value {
        let c = match self.rng_prefix.get(&key) {
            Some(&slot) => b.ins().stack_load(types::I64, types::I64, slot, 0),
            None => self.rng_prefix_value(b, key),
        };
        let ix = b.ins().imul_imm_s(idx, 0x9e37_79b9_7f4a_7c15_u64 as i64);
        let x = b.ins().bxor(c, ix);
        Self::mix(b, x)
    }

    fn uniform(&self, b: &mut FunctionBuilder, key: u32, idx: Value) -> Value {
        let h = self.bits(b, key, idx);
        let top = b.ins().ushr_imm_u(h, 40);
        let f = b.ins().fcvt_from_uint(types::F32, top);
        let scale = b.ins().f32const(1.0 / (1u64 << 24) as f32);
        b.ins().fmul(f, scale)
    }

    /// The index a random op over [B, …] draws element `idx` at: `idx` plus the elements of
    /// the rows before the batch (`Env::row_offset`, as `interp::row_offset`).
    fn global_index(
        &self,
        b: &mut FunctionBuilder,
        n: NodeId,
        shape: &[crate::types::Dim],
        idx: Value,
    ) -> Value {
        match shape.first() {
            Some(crate::types::Dim::Sym(s)) if s == "B" => {
                let c = &self.shapes[&n];
                let per_row: usize = c[1..].iter().product();
                let off = b.ins().imul_imm_s(self.rows, per_row as i64);
                b.ins().iadd(idx, off)
            }
            _ => idx,
        }
    }

    /// The hash of (seed, key, step) that every draw of `key` starts from (`rng::bits`
    /// before the index enters).
    fn rng_prefix_value(&self, b: &mut FunctionBuilder, key: u32) -> Value {
        let c1 = b
            .ins()
            .bxor_imm_s(self.seed, 0x9e37_79b9_7f4a_7c15_u64 as i64);
        let a = Self::mix(b, c1);
        let k = b.ins().iconst(
            types::I64,
            (key as u64).wrapping_mul(0xd1b5_4a32_d192_ed03) as i64,
        );
        let x = b.ins().bxor(a, k);
        let bb = Self::mix(b, x);
        let st = b
            .ins()
            .imul_imm_s(self.step, 0x8cb9_2ba7_2f3d_8dd7_u64 as i64);
        let x = b.ins().bxor(bb, st);
        Self::mix(b, x)
    }

    pub(super) fn emit(
        &mut self,
        b: &mut FunctionBuilder,
        n: NodeId,
        idx: Value,
    ) -> Result<Value, String> {
        if let Some(&v) = self.rowvals.get(&n) {
            return Ok(if self.vec {
                b.ins().splat(types::F32X4, v)
            } else {
                v
            });
        }
        if let Some(&p) = self.mem.get(&n) {
            if numel(&self.shapes[&n]) == 1 {
                let v = b.ins().load(types::F32, MemFlagsData::trusted(), p, 0);
                return Ok(if self.vec {
                    b.ins().splat(types::F32X4, v)
                } else {
                    v
                });
            }
            let off = b.ins().imul_imm_s(idx, 4);
            let addr = b.ins().iadd(p, off);
            let t = self.ty();
            return Ok(b.ins().load(t, MemFlagsData::trusted(), addr, 0));
        }
        if let Some(&v) = self.hoisted.get(&n) {
            if self.vec
                && let Some(&s) = self.splats.get(&n)
            {
                return Ok(s);
            }
            let v = match self.pinned.get(&n) {
                Some(&slot) => self.load_pinned(b, slot),
                None if self.vec => b.ins().splat(types::F32X4, v),
                None => v,
            };
            if self.vec {
                self.splats.insert(n, v);
            }
            return Ok(v);
        }
        let shape = self.shapes[&n].clone();
        let at_loop = shape == self.loop_shape;
        if at_loop && let Some(&v) = self.memo.get(&n) {
            return Ok(v);
        }
        let ins = self.body.inputs(n);
        let arg = |s: &mut Self, b: &mut FunctionBuilder, k: usize| -> Result<Value, String> {
            let c = ins[k];
            let cs = s.shapes[&c].clone();
            let ci = s.map_idx(b, idx, &shape, &cs);
            if s.vec && s.per_row(&shape, &cs) {
                // The same in every lane: computed once, as a scalar, and splatted.
                s.vec = false;
                let v = s.emit(b, c, ci);
                s.vec = true;
                return Ok(b.ins().splat(types::F32X4, v?));
            }
            s.emit(b, c, ci)
        };
        use Op::*;
        let v = match &self.body.node(n).op {
            Input { .. } => {
                let k = self.input_of[&n];
                let off = b.ins().imul_imm_s(idx, 4);
                let addr = b.ins().iadd(self.in_ptr[k], off);
                let t = self.ty();
                b.ins().load(t, MemFlagsData::trusted(), addr, 0)
            }
            Const { data, .. } => self.fconst(b, data[0].get() as f32),
            Random {
                key,
                dist: Dist::Uniform,
                shape,
            } => {
                let idx = self.global_index(b, n, shape, idx);
                self.uniform(b, *key, idx)
            }
            Random { key, shape, .. } => {
                let idx = self.global_index(b, n, shape, idx);
                let h = self.bits(b, *key, idx);
                let c = b.ins().call(self.normal, &[h]);
                b.inst_results(c)[0]
            }
            Neg => {
                let x = arg(self, b, 0)?;
                b.ins().fneg(x)
            }
            Abs => {
                let x = arg(self, b, 0)?;
                b.ins().fabs(x)
            }
            Sqrt => {
                let x = arg(self, b, 0)?;
                b.ins().sqrt(x)
            }
            Relu => {
                let x = arg(self, b, 0)?;
                let z = self.fconst(b, 0.0);
                b.ins().fmax(x, z)
            }
            Sign => {
                let x = arg(self, b, 0)?;
                let z = b.ins().f32const(0.0);
                let one = b.ins().f32const(1.0);
                let m1 = b.ins().f32const(-1.0);
                let pos = b.ins().fcmp(FloatCC::GreaterThan, x, z);
                let neg = b.ins().fcmp(FloatCC::LessThan, x, z);
                let t = b.ins().select(neg, m1, x);
                let t = b.ins().select(pos, one, t);
                // x = ±0 stays as is; NaN stays NaN.
                let is_zero = b.ins().fcmp(FloatCC::Equal, x, z);
                b.ins().select(is_zero, z, t)
            }
            Exp => {
                let x = arg(self, b, 0)?;
                math::exp(b, x)
            }
            Log => {
                let x = arg(self, b, 0)?;
                math::log(b, x)
            }
            Tanh => {
                let x = arg(self, b, 0)?;
                math::tanh(b, x)
            }
            Sigmoid => {
                let x = arg(self, b, 0)?;
                math::sigmoid(b, x)
            }
            Softmax { .. }
                if self.rowexp.contains_key(&n)
                    && self.rc.is_some()
                    && self.shapes[&n] == self.rc_shape =>
            {
                // The row's exp(x - max), kept by its row reduction, times 1/sum.
                let (row, inv) = self.rowexp[&n];
                let (_, c) = self.rc.expect("checked");
                let off = b.ins().imul_imm_s(c, 4);
                let a = b.ins().iadd(row, off);
                let t = self.ty();
                let e = b.ins().load(t, MemFlagsData::trusted(), a, 0);
                let inv = if self.vec {
                    b.ins().splat(types::F32X4, inv)
                } else {
                    inv
                };
                b.ins().fmul(e, inv)
            }
            Softmax { .. } | LogSoftmax { .. } => {
                let x = arg(self, b, 0)?;
                let (m, ls) = *self
                    .rowstats
                    .get(&n)
                    .ok_or("a (log-)softmax outside a row kernel")?;
                let (m, ls) = if self.vec {
                    (
                        b.ins().splat(types::F32X4, m),
                        b.ins().splat(types::F32X4, ls),
                    )
                } else {
                    (m, ls)
                };
                let d = b.ins().fsub(x, m);
                let d = b.ins().fsub(d, ls);
                if matches!(self.body.node(n).op, Softmax { .. }) {
                    math::exp(b, d)
                } else {
                    d
                }
            }
            StopGradient | Reshape { .. } => {
                let c = ins[0];
                self.emit(b, c, idx)?
            }
            Broadcast { .. } => arg(self, b, 0)?,
            Cast(DType::F32) => arg(self, b, 0)?,
            Cast(DType::I32) => {
                let x = arg(self, b, 0)?;
                b.ins().trunc(x)
            }
            Div if self.recips.contains_key(&ins[1])
                && numel(&shape) > 1
                && self.body.ty(n).dtype == DType::F32 =>
            {
                // x / s for a loop-invariant scalar s: x · (1/s), one division per call
                // instead of one per element.
                let x = arg(self, b, 0)?;
                let r = self.load_pinned(b, self.recips[&ins[1]]);
                b.ins().fmul(x, r)
            }
            Add | Sub | Mul | Div | Pow | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne => {
                let x = arg(self, b, 0)?;
                let y = arg(self, b, 1)?;
                let cmp = |s: &Self, b: &mut FunctionBuilder, cc: FloatCC| {
                    let c = b.ins().fcmp(cc, x, y);
                    s.cond_f32(b, c)
                };
                match &self.body.node(n).op {
                    Add => b.ins().fadd(x, y),
                    Sub => b.ins().fsub(x, y),
                    Mul => b.ins().fmul(x, y),
                    Div if self.body.ty(n).dtype == DType::I32 => {
                        // i32 division rounds toward zero, as in the interpreter.
                        let q = b.ins().fdiv(x, y);
                        b.ins().trunc(q)
                    }
                    Div => b.ins().fdiv(x, y),
                    Maximum => b.ins().fmax(x, y),
                    Minimum => b.ins().fmin(x, y),
                    Pow => self.call_lanes(b, self.pow, &[x, y]),
                    Lt => cmp(self, b, FloatCC::LessThan),
                    Le => cmp(self, b, FloatCC::LessThanOrEqual),
                    Gt => cmp(self, b, FloatCC::GreaterThan),
                    Ge => cmp(self, b, FloatCC::GreaterThanOrEqual),
                    Eq => cmp(self, b, FloatCC::Equal),
                    _ => cmp(self, b, FloatCC::NotEqual),
                }
            }
            Select => {
                let c = arg(self, b, 0)?;
                let x = arg(self, b, 1)?;
                let y = arg(self, b, 2)?;
                let z = self.fconst(b, 0.0);
                let t = b.ins().fcmp(FloatCC::NotEqual, c, z);
                if self.vec {
                    let m = b.ins().bitcast(
                        types::F32X4,
                        MemFlagsData::new()
                            .with_endianness(cranelift_codegen::ir::Endianness::Little),
                        t,
                    );
                    b.ins().bitselect(m, x, y)
                } else {
                    b.ins().select(t, x, y)
                }
            }
            OneHot { depth } => {
                let d = *depth as i64;
                let (li, cls) = match self.rc {
                    Some(rc) if shape == self.rc_shape => rc,
                    _ => (udiv(b, idx, d as usize), urem(b, idx, d as usize)),
                };
                if self.vec {
                    // Columns cls..cls+4 of one row: the label once, against each column.
                    self.vec = false;
                    let l = self.emit(b, ins[0], li);
                    self.vec = true;
                    let l = b.ins().splat(types::F32X4, l?);
                    let c0 = b.ins().fcvt_from_uint(types::F32, cls);
                    let mut cf = b.ins().splat(types::F32X4, c0);
                    for lane in 1..LANES as u8 {
                        let k = b.ins().f32const(lane as f32);
                        let v = b.ins().fadd(c0, k);
                        cf = b.ins().insertlane(cf, v, lane);
                    }
                    let c = b.ins().fcmp(FloatCC::Equal, l, cf);
                    self.cond_f32(b, c)
                } else {
                    let l = self.emit(b, ins[0], li)?;
                    let cf = b.ins().fcvt_from_uint(types::F32, cls);
                    let c = b.ins().fcmp(FloatCC::Equal, l, cf);
                    Self::bool_f32(b, c)
                }
            }
            op => return Err(format!("`{}` is not a loop op", op.name())),
        };
        if at_loop {
            self.memo.insert(n, v);
        }
        Ok(v)
    }
}

/// The imported scalar math functions of a kernel.
pub(super) struct MathIds {
    pow: FuncId,
    normal: FuncId,
}

/// Declare a new kernel `fn(ptrs, seed, step, from, to, of, rows)` (and the math it may call)
/// and set up the context to build it.
pub(super) fn begin(jit: &mut Jit) -> Result<(FuncId, String, MathIds), String> {
    let ptr = types::I64;
    let mut sig = Signature::new(jit.module.isa().default_call_conv());
    sig.params.extend([
        AbiParam::new(ptr),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
        AbiParam::new(types::I64),
    ]);
    let mut unary = Signature::new(jit.module.isa().default_call_conv());
    unary.params.push(AbiParam::new(types::F32));
    unary.returns.push(AbiParam::new(types::F32));
    let mut binary = unary.clone();
    binary.params.push(AbiParam::new(types::F32));
    let declare = |jit: &mut Jit, name: &str, s: &Signature| {
        jit.module
            .declare_function(name, Linkage::Import, s)
            .map_err(|e| e.to_string())
    };
    let mut bits = Signature::new(jit.module.isa().default_call_conv());
    bits.params.push(AbiParam::new(types::I64));
    bits.returns.push(AbiParam::new(types::F32));
    let math = MathIds {
        pow: declare(jit, "dlc_powf", &binary)?,
        normal: declare(jit, "dlc_normal", &bits)?,
    };
    jit.next_id += 1;
    let name = format!("kernel{}", jit.next_id);
    let fid = jit
        .module
        .declare_function(&name, Linkage::Local, &sig)
        .map_err(|e| e.to_string())?;
    jit.ctx.func.signature = sig;
    jit.ctx.func.name = UserFuncName::user(0, fid.as_u32());
    Ok((fid, name, math))
}

/// Compile a kernel built in the context; keep its CLIF for `--emit clif`.
pub(super) fn finish(jit: &mut Jit, fid: FuncId, name: String) -> Result<KernelFn, String> {
    let code = define(jit, fid, name, false)?;
    // SAFETY: the function was just defined with exactly this signature.
    Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
}

/// Compile the function built in the context and return its address. Its CLIF is kept for
/// `--emit clif` under `name`, and with `asm` also its machine code, under `{name}.asm`.
pub(super) fn define(
    jit: &mut Jit,
    fid: FuncId,
    name: String,
    asm: bool,
) -> Result<*const u8, String> {
    let clif = jit.ctx.func.display().to_string();
    jit.ctx.set_disasm(asm);
    jit.module
        .define_function(fid, &mut jit.ctx)
        .map_err(|e| format!("cranelift: {e:?}"))?;
    if asm {
        let code = jit
            .ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
        // The optimized CLIF, then the machine code.
        let optimized = jit.ctx.func.display().to_string();
        jit.clif.push((name.clone(), clif));
        jit.clif
            .push((format!("{name}.asm"), format!("{optimized}\n{code}")));
    } else {
        jit.clif.push((name, clif));
    }
    jit.module.clear_context(&mut jit.ctx);
    jit.module
        .finalize_definitions()
        .map_err(|e| e.to_string())?;
    Ok(jit.module.get_finalized_function(fid))
}

/// The kernel's entry block: its parameters (ptrs, seed, step, from, to, of, rows), then the
/// input and the output buffers read from the pointer table.
pub(super) fn entry(
    b: &mut FunctionBuilder,
    n_inputs: usize,
    n_outputs: usize,
) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let p = b.block_params(block).to_vec();
    let load = |b: &mut FunctionBuilder, k: usize| {
        b.ins()
            .load(types::I64, MemFlagsData::trusted(), p[0], (8 * k) as i32)
    };
    let ins = (0..n_inputs).map(|k| load(b, k)).collect();
    let outs = (0..n_outputs).map(|j| load(b, n_inputs + j)).collect();
    (p, ins, outs)
}

impl<'a> Gen<'a> {
    /// Record scalar `v` of node `n`, computed before the loops, and keep it in a stack
    /// slot that the loops read. Cranelift rematerializes constants at their uses, which
    /// drags loop-invariant arithmetic on a constant back into the loop (1 − β₁ᵗ and its
    /// reciprocal in Adam: two scalar divisions per iteration, sharing the divider with
    /// the update's square root and division); a load from the slot stays where it is.
    /// Only constants themselves are used directly.
    pub(super) fn hoist(&mut self, b: &mut FunctionBuilder, n: NodeId, v: Value) {
        self.hoisted.insert(n, v);
        if !matches!(self.body.node(n).op, Op::Const { .. }) {
            let slot = Gen::splat_slot(b, v);
            self.pinned.insert(n, slot);
        }
    }

    /// Compute once, before the loops, every one-element node of `order` (in schedule
    /// order) that `eligible` accepts and whose operands are all hoisted: scalar inputs,
    /// constants and what is computed from them (not random draws, which depend on the
    /// index).
    pub(super) fn hoist_scalars(
        &mut self,
        b: &mut FunctionBuilder,
        order: &[NodeId],
        eligible: impl Fn(NodeId) -> bool,
    ) -> Result<(), String> {
        let zero = b.ins().iconst(types::I64, 0);
        for &n in order {
            if let Op::Random { key, .. } = self.body.node(n).op
                && !self.rng_prefix.contains_key(&key)
            {
                let c = self.rng_prefix_value(b, key);
                let slot = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    8,
                    3,
                ));
                b.ins().stack_store(types::I64, c, slot, 0);
                self.rng_prefix.insert(key, slot);
            }
            let scalar_cone = numel(&self.shapes[&n]) == 1
                && eligible(n)
                && !matches!(self.body.node(n).op, Op::Random { .. })
                && self
                    .body
                    .inputs(n)
                    .iter()
                    .all(|i| self.hoisted.contains_key(i));
            if scalar_cone {
                self.loop_shape = self.shapes[&n].clone();
                let v = self.emit(b, n, zero)?;
                self.memo.clear();
                self.splats.clear();
                self.hoist(b, n, v);
            }
        }
        Ok(())
    }

    /// A 16-byte stack slot holding `v` in all four lanes (for the vector loops; the
    /// scalar ones read lane 0).
    pub(super) fn splat_slot(b: &mut FunctionBuilder, v: Value) -> StackSlot {
        let slot =
            b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4));
        let lanes = b.ins().splat(types::F32X4, v);
        b.ins().stack_store(types::I64, lanes, slot, 0);
        slot
    }

    /// `v` (an f32 computed once per row, before the loops over the row's columns) read
    /// back from a stack slot, so that it stays computed where it is: see [`Gen::hoist`]
    /// (the row statistics of a softmax — a log, a reciprocal, a select against
    /// infinity — would otherwise be recomputed for every column).
    pub(super) fn spill_row_value(b: &mut FunctionBuilder, v: Value) -> Value {
        let slot = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 4, 2));
        b.ins().stack_store(types::I64, v, slot, 0);
        b.ins().stack_load(types::I64, types::F32, slot, 0)
    }

    /// A pinned value, as a vector in the vector loops and a scalar in the others.
    pub(super) fn load_pinned(&self, b: &mut FunctionBuilder, slot: StackSlot) -> Value {
        let t = if self.vec { types::F32X4 } else { types::F32 };
        b.ins().stack_load(types::I64, t, slot, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        module: &mut cranelift_jit::JITModule,
        b: &mut FunctionBuilder,
        math: &MathIds,
        body: &'a Graph,
        shapes: HashMap<NodeId, Vec<usize>>,
        input_of: HashMap<NodeId, usize>,
        in_ptr: Vec<Value>,
        (seed, step, rows): (Value, Value, Value),
    ) -> Gen<'a> {
        Gen {
            body,
            shapes,
            input_of,
            in_ptr,
            seed,
            step,
            rows,
            pow: module.declare_func_in_func(math.pow, b.func),
            normal: module.declare_func_in_func(math.normal, b.func),
            hoisted: HashMap::new(),
            pinned: HashMap::new(),
            recips: HashMap::new(),
            rowvals: HashMap::new(),
            rowstats: HashMap::new(),
            rowexp: HashMap::new(),
            mem: HashMap::new(),
            rc: None,
            rc_shape: Vec::new(),
            memo: HashMap::new(),
            loop_shape: vec![],
            vec: false,
            splats: HashMap::new(),
            rng_prefix: HashMap::new(),
        }
    }
}
