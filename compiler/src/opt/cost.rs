//! The static cost model used by extraction: estimated floating-point operations plus
//! elements moved, from the types in the e-class analysis. Symbolic dimensions (the
//! batch) count as [`SYMBOLIC_DIM`]. Costs are local to one e-node and computed without
//! allocating, so a value shared by the forward and backward passes is never charged
//! twice (see `extract.rs`).

use crate::ops::Op;
use crate::types::{Dim, Type};

/// What a symbolic dimension (the batch `B`) counts as.
pub const SYMBOLIC_DIM: f64 = 64.0;

fn elems(t: &Type) -> f64 {
    t.shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n as f64,
            Dim::Sym(_) => SYMBOLIC_DIM,
        })
        .product()
}

/// The cost of computing `op` with inputs of types `ins` into `out`.
pub fn op_cost(op: &Op, ins: &[Option<&Type>], out: &Type) -> f64 {
    use Op::*;
    let n = elems(out);
    let moved: f64 = n + ins.iter().map(|t| t.map_or(0.0, elems)).sum::<f64>();
    match op {
        Input { .. } | Param { .. } | State { .. } | Const { .. } => 0.0,
        // Views: no data moves.
        Reshape { .. } | StopGradient => 0.0,
        Random { .. } => 4.0 * n,
        Neg | Abs | Sign | Relu | Cast(_) | Add | Sub | Mul | Maximum | Minimum => n + moved,
        Lt | Le | Gt | Ge | Eq | Ne | Select => n + moved,
        Div | Sqrt => 4.0 * n + moved,
        Exp | Log | Tanh | Sigmoid => 10.0 * n + moved,
        Pow => 20.0 * n + moved,
        Sum { .. } | Mean { .. } | Max { .. } | ArgMax { .. } | SumTo { .. } => moved,
        Softmax { .. } | LogSoftmax { .. } => 12.0 * n + moved,
        Broadcast { .. }
        | Transpose { .. }
        | Concat { .. }
        | Slice { .. }
        | Gather
        | ScatterAdd { .. }
        | OneHot { .. } => moved,
        // Two flops per stored entry and feature: the values' length times the features.
        GatherPoints | ScatterPoints { .. } => moved,
        // N² distances of C numbers per set.
        Knn { .. } => {
            let t = ins.first().and_then(|t| *t);
            let d = |i: usize| {
                t.map_or(SYMBOLIC_DIM, |t| {
                    t.shape[i].known().map_or(SYMBOLIC_DIM, |k| k as f64)
                })
            };
            3.0 * d(0) * d(1) * d(1) * d(2) + moved
        }
        SpMM | SpMMT => {
            let nnz = ins.get(2).and_then(|t| *t).map_or(SYMBOLIC_DIM, |t| {
                t.shape[0].known().map_or(SYMBOLIC_DIM, |k| k as f64)
            });
            let features = ins.get(3).and_then(|t| *t).map_or(1.0, |t| {
                t.shape[1].known().map_or(SYMBOLIC_DIM, |k| k as f64)
            });
            2.0 * nnz * features + moved
        }
        ContractLeading => {
            // 2·K·N·rows flops: the rows are the first operand's size over K.
            let rows = ins.first().and_then(|t| *t).map_or(SYMBOLIC_DIM, |t| {
                t.shape[..t.shape.len().saturating_sub(1)]
                    .iter()
                    .map(|d| d.known().map_or(SYMBOLIC_DIM, |k| k as f64))
                    .product()
            });
            2.0 * n * rows + moved
        }
        MatMul { .. } => {
            // 2·M·N·K flops: K is the contracted size of the first operand.
            let k = ins.first().and_then(|t| *t).map_or(1.0, |t| {
                let r = t.shape.len();
                let (a, b) = (&t.shape[r.saturating_sub(1)], &t.shape[r.saturating_sub(2)]);
                let d = if let Op::MatMul { ta: true, .. } = op {
                    b
                } else {
                    a
                };
                match d {
                    Dim::Known(k) => *k as f64,
                    Dim::Sym(_) => SYMBOLIC_DIM,
                }
            });
            2.0 * n * k + moved
        }
        // 2·KH·KW·C multiply-adds per output element (per input element for the input
        // gradient; per filter element and output position for the filter gradient).
        Conv2d { geo } | Conv2dBackInput { geo, .. } | Conv2dBackFilter { geo } => {
            let big = ins
                .iter()
                .map(|t| t.map_or(0.0, elems))
                .chain([n])
                .fold(0.0, f64::max);
            let per = (geo.size[0] * geo.size[1]) as f64;
            let ch = ins
                .get(1)
                .and_then(|t| *t)
                .and_then(|t| t.shape.last())
                .map_or(1.0, |d| match d {
                    Dim::Known(k) => *k as f64,
                    Dim::Sym(_) => SYMBOLIC_DIM,
                });
            2.0 * big * per * ch + moved
        }
        MaxPool2d { geo }
        | MaxPool2dBack { geo }
        | AvgPool2d { geo }
        | AvgPool2dBack { geo, .. } => (geo.size[0] * geo.size[1]) as f64 * n + moved,
        Scan { .. } | Fused { .. } => 100.0 * moved,
        Vjp(_) => f64::INFINITY,
    }
}
