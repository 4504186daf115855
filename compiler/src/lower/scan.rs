//! Lowering `scan(f, xs, init: c0, reverse: false)`: the step function is called once on
//! placeholder leaves (a carry of the initial carry's types, a slice of each scanned
//! value without its time axis); `crate::scan::build` cuts the traced step into the
//! scan's body. `xs` is batch-first [B, T, …] (as Keras) and scanned over axis 1; the
//! scan itself runs time-major, so `xs` is transposed in and the stacked outputs out.

use super::eval::Lowerer;
use super::value::Value;
use crate::ir::NodeId;
use crate::ops::Op;
use crate::scan::{Trace, build};
use dlc_dsl::ast::Span;

/// Tensors of a value that is a tensor or a tuple of tensors, and whether it was a tuple.
fn flat(lw: &mut Lowerer, v: &Value, what: &str, span: Span) -> Option<(Vec<NodeId>, bool)> {
    match v {
        Value::Tensor(n) => Some((vec![*n], false)),
        Value::Tuple(items) | Value::List(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for it in items {
                match it {
                    Value::Tensor(n) => out.push(*n),
                    Value::Poison => return None,
                    other => {
                        lw.err(
                            span,
                            format!(
                                "{what} must be tensors, found {} in the tuple",
                                other.kind()
                            ),
                        );
                        return None;
                    }
                }
            }
            Some((out, true))
        }
        Value::Poison => None,
        other => {
            lw.err(
                span,
                format!(
                    "{what} must be a tensor or a tuple of tensors, found {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

fn pack(ns: &[NodeId], tuple: bool) -> Value {
    if tuple {
        Value::Tuple(ns.iter().map(|&n| Value::Tensor(n)).collect())
    } else {
        Value::Tensor(ns[0])
    }
}

/// Swap the first two axes (batch-first ↔ time-major).
fn swap01(lw: &mut Lowerer, n: NodeId) -> NodeId {
    let rank = lw.graph.ty(n).rank();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(0, 1);
    lw.graph.add_ok(Op::Transpose { perm }, &[n])
}

impl Lowerer {
    pub(crate) fn scan(
        &mut self,
        f: (Value, Span),
        xs: (Value, Span),
        init: (Value, Span),
        reverse: bool,
        span: Span,
    ) -> Option<Value> {
        let (xs_b, xs_tuple) = flat(self, &xs.0, "the scanned values `xs`", xs.1)?;
        let (inits, init_tuple) = flat(self, &init.0, "the initial carry `init`", init.1)?;
        let mut steps = None;
        for &x in &xs_b {
            let ty = self.graph.ty(x).clone();
            if ty.rank() < 2 {
                self.err(
                    xs.1,
                    format!("scan needs values [B, T, …] to scan over axis 1, found {ty}"),
                );
                return None;
            }
            match &steps {
                None => steps = Some(ty.shape[1].clone()),
                Some(t) if *t != ty.shape[1] => {
                    self.err(
                        xs.1,
                        format!(
                            "the scanned values have different lengths ({t} and {})",
                            ty.shape[1]
                        ),
                    );
                    return None;
                }
                Some(_) => {}
            }
        }
        let key = self.fresh_key();
        let leaf = |lw: &mut Lowerer, name: String, n: NodeId, drop_first: bool| {
            let mut ty = lw.graph.ty(n).clone();
            if drop_first {
                ty.shape.remove(0);
            }
            lw.graph.add_ok(
                Op::Input {
                    name,
                    ty: (ty.dtype, ty.shape),
                },
                &[],
            )
        };
        let xs_t: Vec<NodeId> = xs_b.iter().map(|&x| swap01(self, x)).collect();
        let carry_ph: Vec<NodeId> = inits
            .iter()
            .enumerate()
            .map(|(i, &n)| leaf(self, format!("scan{key}.carry{i}"), n, false))
            .collect();
        let x_ph: Vec<NodeId> = xs_t
            .iter()
            .enumerate()
            .map(|(j, &n)| leaf(self, format!("scan{key}.x{j}"), n, true))
            .collect();
        let args = vec![
            (None, pack(&carry_ph, init_tuple), init.1),
            (None, pack(&x_ph, xs_tuple), xs.1),
        ];
        let out = self.call(f.0, args, span, f.1);
        let bad = |lw: &mut Lowerer, found: &str| {
            lw.err(
                f.1,
                format!(
                    "a scan's step function must return a pair (new carry, output), found {found}"
                ),
            );
        };
        let (carry_v, y_v) = match out {
            Value::Tuple(mut items) if items.len() == 2 => {
                let y = items.pop().expect("two items");
                (items.pop().expect("two items"), y)
            }
            Value::Poison => return None,
            other => {
                bad(self, other.kind());
                return None;
            }
        };
        let (carry_out, carry_tuple) = flat(self, &carry_v, "the new carry", f.1)?;
        if carry_tuple != init_tuple || carry_out.len() != inits.len() {
            self.err(
                f.1,
                format!(
                    "the step function returns a carry of {} tensor(s) for an initial carry of {}",
                    carry_out.len(),
                    inits.len()
                ),
            );
            return None;
        }
        for (i, (&a, &b)) in inits.iter().zip(&carry_out).enumerate() {
            if self.graph.ty(a) != self.graph.ty(b) {
                let (ta, tb) = (self.graph.ty(a).clone(), self.graph.ty(b).clone());
                self.err(
                    f.1,
                    format!("carry {i} starts as {ta} but the step function returns {tb}"),
                );
                return None;
            }
        }
        let (ys, y_tuple) = flat(self, &y_v, "the step's output", f.1)?;
        for &y in &ys {
            if self.graph.ty(y).rank() == 0 {
                self.err(
                    f.1,
                    "the step's output must have a batch axis to be stacked as [B, T, …], found a scalar",
                );
                return None;
            }
        }
        let trace = Trace {
            inits: inits.clone(),
            xs: xs_t,
            carry_ph,
            x_ph,
            carry_out,
            ys,
            reverse,
        };
        let outs = match build(&mut self.graph, &trace) {
            Ok(o) => o,
            Err(e) => {
                self.err(span, format!("scan: {e}"));
                return None;
            }
        };
        let (last, stacked) = outs.split_at(inits.len());
        let stacked: Vec<NodeId> = stacked.to_vec();
        let ys_b: Vec<NodeId> = stacked.into_iter().map(|y| swap01(self, y)).collect();
        Some(Value::Tuple(vec![
            pack(&ys_b, y_tuple),
            pack(last, init_tuple),
        ]))
    }
}
