//! Data-movement kernels: transpose, slice, concat, gather and scatter-add, natively (a
//! fusion group of class copy is one op). Each writes its result straight into the buffer
//! the executor gives it (an arena slot or a pool buffer), in row-major order.

use crate::ops::Op;
use ndarray::{ArrayViewD, ArrayViewMutD, Axis, IxDyn, Slice, Zip};

/// Whether an op is a data-movement op that `run` computes.
pub fn supported(op: &Op) -> bool {
    matches!(
        op,
        Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::SpMM
            | Op::SpMMT
            | Op::Knn { .. }
            | Op::GatherPoints
            | Op::ScatterPoints { .. }
    )
}

/// Compute `op` of `ins` into `out` (of shape `shape`).
pub fn run(op: &Op, ins: &[ArrayViewD<f32>], out: &mut ArrayViewMutD<f32>) -> Result<(), String> {
    let copy = |out: &mut ArrayViewMutD<f32>, src: &ArrayViewD<f32>| {
        Zip::from(out).and(src).for_each(|o, &s| *o = s);
    };
    match op {
        Op::Transpose { perm } => {
            copy(out, &ins[0].view().permuted_axes(IxDyn(perm)));
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            let s = Slice::new(*start as isize, Some(*end as isize), *step as isize);
            copy(out, &ins[0].slice_axis(Axis(*axis), s));
        }
        Op::Concat { axis } => {
            let mut at = 0;
            for x in ins {
                let n = x.shape()[*axis];
                let mut part = out.slice_axis_mut(Axis(*axis), Slice::from(at..at + n));
                copy(&mut part, x);
                at += n;
            }
        }
        Op::Gather => {
            let (table, idx) = (&ins[0], &ins[1]);
            let rows = table.shape()[0];
            let width: usize = table.shape()[1..].iter().product();
            let t = table.as_standard_layout();
            let t = t.as_slice().ok_or("gather: layout")?;
            let o = out.as_slice_mut().ok_or("gather: layout")?;
            for (k, &i) in idx.iter().enumerate() {
                if !(i >= 0.0 && (i as usize) < rows) {
                    return Err(format!(
                        "gather index {i} is out of range for a table of {rows} rows"
                    ));
                }
                let r = i as usize;
                o[k * width..][..width].copy_from_slice(&t[r * width..][..width]);
            }
        }
        Op::ScatterAdd { rows } => {
            let (idx, g) = (&ins[0], &ins[1]);
            let width: usize = g.shape()[idx.ndim()..].iter().product();
            let gs = g.as_standard_layout();
            let gs = gs.as_slice().ok_or("scatter_add: layout")?;
            let o = out.as_slice_mut().ok_or("scatter_add: layout")?;
            o.fill(0.0);
            // In index order, as the reference: the same sums whatever the thread count.
            for (k, &i) in idx.iter().enumerate() {
                let r = i as usize;
                if !(i >= 0.0 && r < *rows) {
                    return Err(format!(
                        "scatter_add index {i} is out of range for {rows} rows"
                    ));
                }
                for (d, &v) in o[r * width..][..width]
                    .iter_mut()
                    .zip(&gs[k * width..][..width])
                {
                    *d += v;
                }
            }
        }
        Op::Knn { k } => {
            let p = ins[0].as_standard_layout();
            let s = p.shape().to_vec();
            let o = out.as_slice_mut().ok_or("knn: layout")?;
            crate::sparse::knn(p.as_slice().ok_or("knn: layout")?, s[0], s[1], s[2], *k, o);
        }
        Op::GatherPoints => {
            let (h, idx) = (&ins[0], &ins[1]);
            let (b, n, c) = (h.shape()[0], h.shape()[1], h.shape()[2]);
            let hs = h.as_standard_layout();
            let hs = hs.as_slice().ok_or("gather_points: layout")?;
            let o = out.as_slice_mut().ok_or("gather_points: layout")?;
            let per = idx.len() / b.max(1);
            for (q, &i) in idx.iter().enumerate() {
                if !(i >= 0.0 && (i as usize) < n) {
                    return Err(format!(
                        "gather_points index {i} is out of range for sets of {n} points"
                    ));
                }
                let row = (q / per) * n + i as usize;
                o[q * c..(q + 1) * c].copy_from_slice(&hs[row * c..(row + 1) * c]);
            }
        }
        Op::ScatterPoints { points } => {
            let (idx, g) = (&ins[0], &ins[1]);
            let (b, c) = (idx.shape()[0], g.shape()[3]);
            let gs = g.as_standard_layout();
            let gs = gs.as_slice().ok_or("scatter_points: layout")?;
            let o = out.as_slice_mut().ok_or("scatter_points: layout")?;
            o.fill(0.0);
            let per = idx.len() / b.max(1);
            // In index order, as the reference.
            for (q, &i) in idx.iter().enumerate() {
                let row = (q / per) * points + i as usize;
                for (d, s) in o[row * c..(row + 1) * c]
                    .iter_mut()
                    .zip(&gs[q * c..(q + 1) * c])
                {
                    *d += s;
                }
            }
        }
        Op::SpMM | Op::SpMMT => {
            let h = &ins[3];
            let csr = crate::sparse::Csr::of(
                ins[0].iter().map(|&v| v as f64),
                ins[1].iter().map(|&v| v as f64),
                ins[2].len(),
                h.shape()[0],
            )?;
            let vals = ins[2].as_standard_layout();
            let hs = h.as_standard_layout();
            let o = out.as_slice_mut().ok_or("spmm: layout")?;
            let threads = rayon::current_num_threads();
            crate::sparse::run(
                &csr,
                vals.as_slice().ok_or("spmm: layout")?,
                hs.as_slice().ok_or("spmm: layout")?,
                h.shape()[1],
                o,
                matches!(op, Op::SpMMT),
                threads,
            );
        }
        other => return Err(format!("internal: `{}` is not a copy op", other.name())),
    }
    Ok(())
}
