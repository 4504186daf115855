//! Native reductions for staged kernels: `sum`, `mean`, `max` and `sum_to` over one run of
//! adjacent axes of a row-major value, seen as [outer, reduced, inner], and `softmax` and
//! `log_softmax` along one axis. Sums accumulate in f64 in index order, as the reference
//! interpreter's do; a NaN in a maximum wins; the softmaxes compute as the interpreter's
//! lanes do, in f32 in the same order.

use crate::ops::Op;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// The reduced axes of `op` on an input of rank `rank` and shape `shape`, when they are
/// one run of adjacent axes (what `run` computes).
fn axes(op: &Op, shape: &[usize], out: &[usize]) -> Option<(usize, usize)> {
    let mut ax: Vec<usize> = match op {
        Op::Sum { axes, .. } | Op::Mean { axes, .. } | Op::Max { axes, .. } => axes.clone(),
        Op::Softmax { axis } | Op::LogSoftmax { axis } if out == shape => vec![*axis],
        Op::SumTo { .. } => {
            // Leading axes dropped, then axes kept as 1.
            let lead = shape.len().checked_sub(out.len())?;
            let mut v: Vec<usize> = (0..lead).collect();
            for (i, &t) in out.iter().enumerate() {
                if t == 1 && shape[lead + i] != 1 {
                    v.push(lead + i);
                } else if t != shape[lead + i] {
                    return None;
                }
            }
            v
        }
        _ => return None,
    };
    ax.sort_unstable();
    ax.dedup();
    let (&a, &b) = (ax.first()?, ax.last()?);
    (b - a + 1 == ax.len() && b < shape.len()).then_some((a, b + 1))
}

/// Whether `run` computes `op` natively on these shapes.
pub fn supported(op: &Op, shape: &[usize], out: &[usize]) -> bool {
    axes(op, shape, out).is_some()
}

/// `op` of `x` into a new array of shape `out`.
pub fn run(op: &Op, x: &ArrayViewD<f32>, out: &[usize]) -> Result<ArrayD<f32>, String> {
    let shape = x.shape().to_vec();
    let (a, b) = axes(op, &shape, out).ok_or("reduce: axes are not adjacent")?;
    let outer: usize = shape[..a].iter().product();
    let r: usize = shape[a..b].iter().product();
    let inner: usize = shape[b..].iter().product();
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().ok_or("reduce: layout")?;
    if let Op::Softmax { .. } | Op::LogSoftmax { .. } = op {
        return softmax(
            matches!(op, Op::LogSoftmax { .. }),
            xs,
            (outer, r, inner),
            out,
        );
    }
    let mut o = vec![0f32; outer * inner];
    match op {
        Op::Max { .. } => {
            for p in 0..outer {
                for i in 0..inner {
                    let mut m = f32::NEG_INFINITY;
                    for k in 0..r {
                        let v = xs[(p * r + k) * inner + i];
                        if v.is_nan() || v > m {
                            m = v;
                            if v.is_nan() {
                                break;
                            }
                        }
                    }
                    o[p * inner + i] = m;
                }
            }
        }
        _ => {
            let scale = if matches!(op, Op::Mean { .. }) {
                r as f64
            } else {
                1.0
            };
            let mut acc = vec![0f64; inner];
            for p in 0..outer {
                acc.iter_mut().for_each(|v| *v = 0.0);
                for k in 0..r {
                    let row = &xs[(p * r + k) * inner..][..inner];
                    for (s, v) in acc.iter_mut().zip(row) {
                        *s += *v as f64;
                    }
                }
                for (d, s) in o[p * inner..][..inner].iter_mut().zip(&acc) {
                    *d = (*s / scale) as f32;
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out), o).map_err(|e| e.to_string())
}

/// Softmax (or its log) of `xs` [outer, r, inner] along the middle axis, lane by lane as
/// the reference interpreter computes it: m the lane's maximum (a NaN wins; 0 when
/// infinite), s = Σ exp(v − m) in order, then exp(v − m) / s or v − m − ln s.
fn softmax(
    log: bool,
    xs: &[f32],
    (outer, r, inner): (usize, usize, usize),
    out: &[usize],
) -> Result<ArrayD<f32>, String> {
    let mut o = xs.to_vec();
    let at = |p: usize, k: usize, i: usize| (p * r + k) * inner + i;
    for p in 0..outer {
        for i in 0..inner {
            let mut m = f32::NEG_INFINITY;
            for k in 0..r {
                let v = xs[at(p, k, i)];
                m = if m.is_nan() || v.is_nan() {
                    f32::NAN
                } else if m >= v {
                    m
                } else {
                    v
                };
            }
            let m = if m.is_infinite() { 0.0 } else { m };
            let s = (0..r).fold(0.0f32, |a, k| a + (xs[at(p, k, i)] - m).exp());
            let ls = s.ln();
            for k in 0..r {
                let v = xs[at(p, k, i)];
                o[at(p, k, i)] = if log { v - m - ls } else { (v - m).exp() / s };
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out), o).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn middle_axis_sums_and_maxima() {
        let x =
            ArrayD::from_shape_vec(IxDyn(&[2, 3, 2]), (0..12).map(|v| v as f32).collect()).unwrap();
        let s = run(
            &Op::Sum {
                axes: vec![1],
                keep: false,
            },
            &x.view(),
            &[2, 2],
        )
        .unwrap();
        assert_eq!(s.as_slice().unwrap(), &[6.0, 9.0, 24.0, 27.0]);
        let m = run(
            &Op::Max {
                axes: vec![1],
                keep: true,
            },
            &x.view(),
            &[2, 1, 2],
        )
        .unwrap();
        assert_eq!(m.as_slice().unwrap(), &[4.0, 5.0, 10.0, 11.0]);
        // sum_to [1, 2]: the leading axis dropped and the next kept as 1.
        let t = run(&Op::SumTo { shape: vec![] }, &x.view(), &[1, 2]).unwrap();
        assert_eq!(t.as_slice().unwrap(), &[30.0, 36.0]);
        // Softmaxes along the middle axis, bit for bit the interpreter's.
        for op in [Op::Softmax { axis: 1 }, Op::LogSoftmax { axis: 1 }] {
            let native = run(&op, &x.view(), &[2, 3, 2]).unwrap();
            let log = matches!(op, Op::LogSoftmax { .. });
            assert_eq!(native, crate::interp::softmax_lane(&x, 1, log), "{op:?}");
        }
        assert!(!supported(
            &Op::Sum {
                axes: vec![0, 2],
                keep: false
            },
            &[2, 3, 2],
            &[3]
        ));
    }
}
