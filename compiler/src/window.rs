//! Sliding windows over the two spatial axes of NHWC tensors: convolution and pooling.
//!
//! The geometry (output sizes, TensorFlow's "same" padding) and the reference semantics
//! of the window ops, as plain loops generic over the interpreter's scalars. The JIT's
//! native kernels (`jit/conv.rs`) read the same geometry and are tested against these
//! loops.
//!
//! Conventions, as Keras and TensorFlow: `x` is `[B, H, W, C]`, a filter is
//! `[KH, KW, C, F]`, convolution is cross-correlation (no flip), and padding is given as
//! `[top, bottom, left, right]` rows and columns of zeros.

use crate::interp::Real;
use ndarray::{ArrayD, IxDyn};

/// The spatial geometry of one window op: kernel (or pooling window) size, stride and
/// zero padding `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Geometry {
    pub size: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 4],
}

impl Geometry {
    /// Output rows and columns for an input of `h` × `w`, or None when the window does not
    /// fit even once.
    pub fn out_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let one = |n: usize, k: usize, s: usize, lo: usize, hi: usize| {
            let padded = n + lo + hi;
            (padded >= k && s > 0 && k > 0).then(|| (padded - k) / s + 1)
        };
        Some([
            one(h, self.size[0], self.stride[0], self.pad[0], self.pad[1])?,
            one(w, self.size[1], self.stride[1], self.pad[2], self.pad[3])?,
        ])
    }

    /// The input row (or column) that window position `o`, offset `k` reads, if inside.
    #[inline]
    pub fn src(&self, axis: usize, o: usize, k: usize, n: usize) -> Option<usize> {
        let p = (o * self.stride[axis] + k) as isize - self.pad[2 * axis] as isize;
        (p >= 0 && (p as usize) < n).then_some(p as usize)
    }

    /// Short text form for the IR printer.
    pub fn show(&self) -> String {
        let mut s = format!(
            "size={}x{}, stride={}x{}",
            self.size[0], self.size[1], self.stride[0], self.stride[1]
        );
        if self.pad != [0; 4] {
            s += &format!(", pad={:?}", self.pad);
        }
        s
    }
}

/// TensorFlow's "same" padding along one axis: the output has ⌈n/s⌉ positions and an odd
/// total puts the extra row (column) at the bottom (right). Returns (before, after).
pub fn same_padding(n: usize, k: usize, s: usize) -> (usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out.saturating_sub(1)) * s + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// Every tap (a, e) of the window at output position (i, j) of an `h` × `w` input that
/// falls inside it, with the input row and column it reads, in row-major window order.
fn taps(
    g: &Geometry,
    i: usize,
    j: usize,
    h: usize,
    w: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    for a in 0..g.size[0] {
        let Some(r) = g.src(0, i, a, h) else { continue };
        for e in 0..g.size[1] {
            if let Some(s) = g.src(1, j, e, w) {
                f(a, e, r, s);
            }
        }
    }
}

/// The four dimensions of an NHWC tensor.
fn dims4(shape: &[usize]) -> Result<[usize; 4], String> {
    match shape {
        &[b, h, w, c] => Ok([b, h, w, c]),
        other => Err(format!("expected an NHWC tensor, got shape {other:?}")),
    }
}

fn contiguous<T: Real>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().copied().collect()
}

fn array<T: Real>(shape: &[usize], data: Vec<T>) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())
}

/// `conv2d(x, w)`: y[b,i,j,f] = Σ x[b, i·sh+kh−pt, j·sw+kw−pl, c] · w[kh,kw,c,f].
pub fn conv2d<T: Real>(x: &ArrayD<T>, w: &ArrayD<T>, g: &Geometry) -> Result<ArrayD<T>, String> {
    let [nb, h, wd, c] = dims4(x.shape())?;
    let [kh, kw, wc, f] = dims4(w.shape())?;
    if wc != c || [kh, kw] != g.size {
        return Err(format!("conv2d of {:?} with {:?}", x.shape(), w.shape()));
    }
    let [oh, ow] = g.out_size(h, wd).ok_or("conv2d: the kernel does not fit")?;
    let (xs, ws) = (contiguous(x), contiguous(w));
    let mut y = vec![T::zero(); nb * oh * ow * f];
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                let out = &mut y[((b * oh + i) * ow + j) * f..][..f];
                taps(g, i, j, h, wd, |a, e, r, s| {
                    let xrow = &xs[((b * h + r) * wd + s) * c..][..c];
                    for (ci, &xv) in xrow.iter().enumerate() {
                        let wrow = &ws[((a * kw + e) * c + ci) * f..][..f];
                        for (o, &wv) in out.iter_mut().zip(wrow) {
                            *o = *o + xv * wv;
                        }
                    }
                });
            }
        }
    }
    array(&[nb, oh, ow, f], y)
}

/// The gradient of `conv2d` with respect to its input, for an input of `input` rows and
/// columns: dx[b,r,s,c] = Σ over the windows that read (r, s) of g[b,i,j,f] · w[kh,kw,c,f].
pub fn conv2d_back_input<T: Real>(
    gy: &ArrayD<T>,
    w: &ArrayD<T>,
    g: &Geometry,
    input: [usize; 2],
) -> Result<ArrayD<T>, String> {
    let [nb, oh, ow, f] = dims4(gy.shape())?;
    let [_, kw, c, wf] = dims4(w.shape())?;
    let [h, wd] = input;
    if wf != f || g.out_size(h, wd) != Some([oh, ow]) {
        return Err(format!(
            "conv2d input gradient of {:?} with {:?}",
            gy.shape(),
            w.shape()
        ));
    }
    let (gs, ws) = (contiguous(gy), contiguous(w));
    let mut dx = vec![T::zero(); nb * h * wd * c];
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                let grow = &gs[((b * oh + i) * ow + j) * f..][..f];
                taps(g, i, j, h, wd, |a, e, r, s| {
                    let out = &mut dx[((b * h + r) * wd + s) * c..][..c];
                    for (ci, o) in out.iter_mut().enumerate() {
                        let wrow = &ws[((a * kw + e) * c + ci) * f..][..f];
                        let mut acc = T::zero();
                        for (&gv, &wv) in grow.iter().zip(wrow) {
                            acc = acc + gv * wv;
                        }
                        *o = *o + acc;
                    }
                });
            }
        }
    }
    array(&[nb, h, wd, c], dx)
}

/// The gradient of `conv2d` with respect to its filter:
/// dw[kh,kw,c,f] = Σ x[b, i·sh+kh−pt, j·sw+kw−pl, c] · g[b,i,j,f].
pub fn conv2d_back_filter<T: Real>(
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    g: &Geometry,
) -> Result<ArrayD<T>, String> {
    let [nb, h, wd, c] = dims4(x.shape())?;
    let [gb, oh, ow, f] = dims4(gy.shape())?;
    let [kh, kw] = g.size;
    if gb != nb || g.out_size(h, wd) != Some([oh, ow]) {
        return Err(format!(
            "conv2d filter gradient of {:?} and {:?}",
            x.shape(),
            gy.shape()
        ));
    }
    let (xs, gs) = (contiguous(x), contiguous(gy));
    let mut dw = vec![T::zero(); kh * kw * c * f];
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                let grow = &gs[((b * oh + i) * ow + j) * f..][..f];
                taps(g, i, j, h, wd, |a, e, r, s| {
                    let xrow = &xs[((b * h + r) * wd + s) * c..][..c];
                    for (ci, &xv) in xrow.iter().enumerate() {
                        let out = &mut dw[((a * kw + e) * c + ci) * f..][..f];
                        for (o, &gv) in out.iter_mut().zip(grow) {
                            *o = *o + xv * gv;
                        }
                    }
                });
            }
        }
    }
    array(&[kh, kw, c, f], dw)
}

/// The input element each pooling window takes: the first maximum in row-major window
/// order (a NaN wins, as the maximum then is NaN), as TensorFlow routes max-pool
/// gradients. Calls `visit(out_index, in_index)` per window and channel.
fn max_positions<T: Real>(
    xs: &[T],
    [nb, h, wd, c]: [usize; 4],
    g: &Geometry,
    mut visit: impl FnMut(usize, usize),
) -> Result<(), String> {
    let [oh, ow] = g
        .out_size(h, wd)
        .ok_or("pooling: the window does not fit")?;
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    let mut best: Option<usize> = None;
                    taps(g, i, j, h, wd, |_, _, r, s| {
                        let k = ((b * h + r) * wd + s) * c + ch;
                        let better = match best {
                            None => true,
                            Some(m) => !xs[m].is_nan() && (xs[k].is_nan() || xs[k] > xs[m]),
                        };
                        if better {
                            best = Some(k);
                        }
                    });
                    if let Some(m) = best {
                        visit(((b * oh + i) * ow + j) * c + ch, m);
                    }
                }
            }
        }
    }
    Ok(())
}

/// `maxpool2d`: the maximum of each window, per channel (NaN if the window holds one).
pub fn max_pool<T: Real>(x: &ArrayD<T>, g: &Geometry) -> Result<ArrayD<T>, String> {
    let d = dims4(x.shape())?;
    let [oh, ow] = g
        .out_size(d[1], d[2])
        .ok_or("maxpool2d: the window does not fit")?;
    let xs = contiguous(x);
    let mut y = vec![T::zero(); d[0] * oh * ow * d[3]];
    max_positions(&xs, d, g, |o, k| y[o] = xs[k])?;
    array(&[d[0], oh, ow, d[3]], y)
}

/// The gradient of `maxpool2d`: each window's gradient goes to its first maximum;
/// overlapping windows add up.
pub fn max_pool_back<T: Real>(
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    g: &Geometry,
) -> Result<ArrayD<T>, String> {
    let d = dims4(x.shape())?;
    let (xs, gs) = (contiguous(x), contiguous(gy));
    let mut dx = vec![T::zero(); xs.len()];
    if g.out_size(d[1], d[2]).map(|[oh, ow]| d[0] * oh * ow * d[3]) != Some(gs.len()) {
        return Err(format!(
            "maxpool2d gradient of {:?} for {:?}",
            gy.shape(),
            x.shape()
        ));
    }
    max_positions(&xs, d, g, |o, k| dx[k] = dx[k] + gs[o])?;
    array(x.shape(), dx)
}

/// `avgpool2d`: the mean of each window, per channel.
pub fn avg_pool<T: Real>(x: &ArrayD<T>, g: &Geometry) -> Result<ArrayD<T>, String> {
    let [nb, h, wd, c] = dims4(x.shape())?;
    let [oh, ow] = g
        .out_size(h, wd)
        .ok_or("avgpool2d: the window does not fit")?;
    let xs = contiguous(x);
    let n = T::of((g.size[0] * g.size[1]) as f64);
    let mut y = vec![T::zero(); nb * oh * ow * c];
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                let out = &mut y[((b * oh + i) * ow + j) * c..][..c];
                taps(g, i, j, h, wd, |_, _, r, s| {
                    let xrow = &xs[((b * h + r) * wd + s) * c..][..c];
                    for (o, &v) in out.iter_mut().zip(xrow) {
                        *o = *o + v;
                    }
                });
                for o in out.iter_mut() {
                    *o = *o / n;
                }
            }
        }
    }
    array(&[nb, oh, ow, c], y)
}

/// The gradient of `avgpool2d` for an input of `input` rows and columns: each window's
/// gradient, divided by the window's size, goes to every element of the window.
pub fn avg_pool_back<T: Real>(
    gy: &ArrayD<T>,
    g: &Geometry,
    input: [usize; 2],
) -> Result<ArrayD<T>, String> {
    let [nb, oh, ow, c] = dims4(gy.shape())?;
    let [h, wd] = input;
    if g.out_size(h, wd) != Some([oh, ow]) {
        return Err(format!("avgpool2d gradient of {:?}", gy.shape()));
    }
    let gs = contiguous(gy);
    let n = T::of((g.size[0] * g.size[1]) as f64);
    let mut dx = vec![T::zero(); nb * h * wd * c];
    for b in 0..nb {
        for i in 0..oh {
            for j in 0..ow {
                let grow = &gs[((b * oh + i) * ow + j) * c..][..c];
                taps(g, i, j, h, wd, |_, _, r, s| {
                    let out = &mut dx[((b * h + r) * wd + s) * c..][..c];
                    for (o, &v) in out.iter_mut().zip(grow) {
                        *o = *o + v / n;
                    }
                });
            }
        }
    }
    array(&[nb, h, wd, c], dx)
}
