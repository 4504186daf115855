//! Window kernels: convolution (forward, input gradient, filter gradient) and pooling
//! (max and average, and their gradients) on NHWC values, natively.
//!
//! A convolution is a GEMM on packed patches (im2col), one row panel at a time so that
//! the packed panel stays in cache: the forward pass packs `[rows, KH·KW·C]` patches of
//! the input and multiplies them by the filter seen as a `[KH·KW·C, F]` matrix; the input
//! gradient gathers, for every input position, the output gradients of the windows that
//! read it (`[rows, KH·KW·F]`) and multiplies them by the filter with its last two axes
//! swapped (no scatter, so rows are independent); the filter gradient multiplies the
//! transposed patches by the output gradient, accumulated over the rows. The GEMM is the
//! project's GEMM core (`sgemm.rs`, the path per shape from the cost table); packing and
//! pooling are plain loops compiled with the rest of dlc, and the elementwise epilogue
//! (bias, activation, the backward ReLU mask) is a Cranelift loop kernel run by the
//! executor on each image's output right after it is computed.
//!
//! Threads take fixed ranges of images, whose outputs are independent, so any split gives
//! the same bits. The filter gradient sums over images: it is computed in [`CHUNKS`]
//! fixed chunks of images whose partial sums are added in chunk order, whatever the
//! number of threads.

use super::sgemm;
use crate::ops::Op;
use crate::window::Geometry;
use std::cell::RefCell;

/// The filter gradient's fixed partition of the images (partial sums added in order).
pub const CHUNKS: usize = 4;

/// Bytes of packed patches per GEMM call (a panel of rows): well inside the L2 cache.
const PANEL_BYTES: usize = 96 << 10;

/// Multiply-adds (or window reads) from which a window kernel splits across threads.
pub const PARALLEL_WINDOW_MIN: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinOp {
    Conv,
    ConvBackInput,
    ConvBackFilter,
    MaxPool,
    MaxPoolBack,
    AvgPool,
    AvgPoolBack,
}

/// One window op at concrete sizes.
#[derive(Clone, Debug)]
pub struct WindowCore {
    pub op: WinOp,
    pub geo: Geometry,
    /// The NHWC value the windows slide over ([B, H, W, C]).
    pub x: [usize; 4],
    /// The windows' output ([B, H', W', F], or [B, H', W', C] for pooling).
    pub y: [usize; 4],
    /// The shape of the op's result.
    pub out: Vec<usize>,
    /// Elements of the op's result.
    pub out_len: usize,
}

thread_local! {
    /// Packed panels, reused by every call on this thread (no allocation per step).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

fn dims4(s: &[usize]) -> Option<[usize; 4]> {
    match *s {
        [a, b, c, d] => Some([a, b, c, d]),
        _ => None,
    }
}

/// A pointer that threads share; each writes its own disjoint part.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: used only to hand disjoint output ranges to the threads of one call.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Out`, which is `Sync`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl WindowCore {
    /// The core of a window op with operands of these shapes, or None for other ops.
    pub fn new(op: &Op, ins: &[Vec<usize>], out: &[usize]) -> Option<WindowCore> {
        let (wop, geo, x, y) = match *op {
            Op::Conv2d { geo } => (WinOp::Conv, geo, dims4(&ins[0])?, dims4(out)?),
            Op::Conv2dBackInput { geo, .. } => {
                (WinOp::ConvBackInput, geo, dims4(out)?, dims4(&ins[0])?)
            }
            Op::Conv2dBackFilter { geo } => {
                (WinOp::ConvBackFilter, geo, dims4(&ins[0])?, dims4(&ins[1])?)
            }
            Op::MaxPool2d { geo } => (WinOp::MaxPool, geo, dims4(&ins[0])?, dims4(out)?),
            Op::MaxPool2dBack { geo } => {
                (WinOp::MaxPoolBack, geo, dims4(&ins[0])?, dims4(&ins[1])?)
            }
            Op::AvgPool2d { geo } => (WinOp::AvgPool, geo, dims4(&ins[0])?, dims4(out)?),
            Op::AvgPool2dBack { geo, .. } => {
                (WinOp::AvgPoolBack, geo, dims4(out)?, dims4(&ins[0])?)
            }
            _ => return None,
        };
        Some(WindowCore {
            op: wop,
            geo,
            x,
            y,
            out: out.to_vec(),
            out_len: out.iter().product(),
        })
    }

    /// Whether the op's result is per image (its first axis is the batch): then an
    /// epilogue can run on each image's part as soon as it is computed.
    pub fn per_image(&self) -> bool {
        self.op != WinOp::ConvBackFilter
    }

    /// Images of the batch.
    pub fn images(&self) -> usize {
        self.x[0]
    }

    fn work(&self) -> usize {
        let [_, _, _, c] = self.x;
        let [b, oh, ow, f] = self.y;
        let win = self.geo.size[0] * self.geo.size[1];
        match self.op {
            WinOp::Conv | WinOp::ConvBackInput | WinOp::ConvBackFilter => b * oh * ow * f * win * c,
            _ => b * oh * ow * f * win,
        }
    }

    /// Compute the op into `out` (`out_len` floats). `ins` are the op's operands,
    /// contiguous row-major. `epilogue(b0, b1)`, when given (per-image ops only), runs
    /// right after images [b0, b1) of the result are complete, on the same thread.
    ///
    /// # Safety
    /// `out` must be valid for `out_len` writes and overlap no operand.
    pub unsafe fn run(
        &self,
        ins: &[&[f32]],
        out: *mut f32,
        threads: usize,
        epilogue: Option<&(dyn Fn(usize, usize) + Sync)>,
    ) {
        let out = Out(out);
        let nb = self.images();
        let parts = if self.work() >= PARALLEL_WINDOW_MIN {
            threads.clamp(1, nb.max(1))
        } else {
            1
        };
        if self.op == WinOp::ConvBackFilter {
            // SAFETY: forwarded contract.
            unsafe { self.back_filter(ins, out, parts) };
            if let Some(e) = epilogue {
                e(0, 1);
            }
            return;
        }
        let prepared = match self.op {
            WinOp::ConvBackInput => Some(swap_filter(ins[1], self.geo.size, self.x[3], self.y[3])),
            _ => None,
        };
        let range = |b0: usize, b1: usize| {
            for b in b0..b1 {
                // SAFETY: image b's part of the output is written by this call only.
                unsafe { self.image(ins, prepared.as_deref(), out, b) };
                if let Some(e) = epilogue {
                    e(b, b + 1);
                }
            }
        };
        if parts <= 1 {
            range(0, nb);
        } else {
            let bounds: Vec<usize> = (0..=parts).map(|p| p * nb / parts).collect();
            rayon::scope(|s| {
                for w in bounds.windows(2).skip(1) {
                    let (b0, b1) = (w[0], w[1]);
                    let range = &range;
                    s.spawn(move |_| range(b0, b1));
                }
                range(bounds[0], bounds[1]);
            });
        }
    }

    /// Image `b` of a per-image op.
    unsafe fn image(&self, ins: &[&[f32]], swapped: Option<&[f32]>, out: Out, b: usize) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, f] = self.y;
        // SAFETY (each arm): image b's part of the output, inside `out` (contract of `run`).
        unsafe {
            match self.op {
                WinOp::Conv => {
                    let img = &ins[0][b * h * w * c..][..h * w * c];
                    let y = out.0.add(b * oh * ow * f);
                    self.conv_rows(img, ins[1], y, oh, ow, f, c, Patch::Forward { h, w });
                }
                WinOp::ConvBackInput => {
                    let gimg = &ins[0][b * oh * ow * f..][..oh * ow * f];
                    let dx = out.0.add(b * h * w * c);
                    let wt = swapped.expect("the swapped filter");
                    self.conv_rows(gimg, wt, dx, h, w, c, f, Patch::Backward { oh, ow });
                }
                WinOp::MaxPool | WinOp::AvgPool => {
                    let img = &ins[0][b * h * w * c..][..h * w * c];
                    let y = std::slice::from_raw_parts_mut(out.0.add(b * oh * ow * c), oh * ow * c);
                    self.pool(img, y, self.op == WinOp::MaxPool);
                }
                WinOp::MaxPoolBack => {
                    let img = &ins[0][b * h * w * c..][..h * w * c];
                    let g = &ins[1][b * oh * ow * c..][..oh * ow * c];
                    let dx = std::slice::from_raw_parts_mut(out.0.add(b * h * w * c), h * w * c);
                    self.max_pool_back(img, g, dx);
                }
                WinOp::AvgPoolBack => {
                    let g = &ins[0][b * oh * ow * c..][..oh * ow * c];
                    let dx = std::slice::from_raw_parts_mut(out.0.add(b * h * w * c), h * w * c);
                    self.avg_pool_back(g, dx);
                }
                WinOp::ConvBackFilter => unreachable!("not per image"),
            }
        }
    }

    /// Rows `[rows_h × rows_w]` of one image's GEMM result `dst` (`n` columns) =
    /// packed patches (`k_ch` channels per tap) × `mat` (`[taps · k_ch, n]`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn conv_rows(
        &self,
        src: &[f32],
        mat: &[f32],
        dst: *mut f32,
        rows_h: usize,
        rows_w: usize,
        n: usize,
        k_ch: usize,
        patch: Patch,
    ) {
        let taps = self.geo.size[0] * self.geo.size[1];
        let k = taps * k_ch;
        let rows = rows_h * rows_w;
        let panel = (PANEL_BYTES / (4 * k)).clamp(8, rows.max(8));
        let panels = rows.div_ceil(panel);
        let panel = rows.div_ceil(panels.max(1));
        let path = sgemm::choose(panel, n, k);
        with_scratch(panel * k, |a| {
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + panel).min(rows);
                for r in r0..r1 {
                    let row = &mut a[(r - r0) * k..][..k];
                    self.pack(src, row, r / rows_w, r % rows_w, k_ch, patch);
                }
                // SAFETY: `a` holds (r1 − r0) × k packed floats, `mat` k × n, and `dst`
                // rows r0..r1 of n floats; the scratch overlaps neither.
                unsafe {
                    sgemm::matmul(
                        path,
                        r1 - r0,
                        n,
                        k,
                        a.as_ptr(),
                        k as isize,
                        1,
                        mat.as_ptr(),
                        n as isize,
                        1,
                        dst.add(r0 * n),
                        n as isize,
                    );
                }
                r0 = r1;
            }
        });
    }

    /// One packed row: for each tap (kh, kw) the `k_ch` values the row's window reads, or
    /// zeros where it falls outside.
    #[inline]
    fn pack(&self, src: &[f32], row: &mut [f32], i: usize, j: usize, k_ch: usize, patch: Patch) {
        let [kh, kw] = self.geo.size;
        for a in 0..kh {
            for e in 0..kw {
                let dst = &mut row[(a * kw + e) * k_ch..][..k_ch];
                let at = match patch {
                    Patch::Forward { h, w } => self
                        .geo
                        .src(0, i, a, h)
                        .zip(self.geo.src(1, j, e, w))
                        .map(|(r, s)| (r * w + s) * k_ch),
                    Patch::Backward { oh, ow } => self
                        .window_of(0, i, a, oh)
                        .zip(self.window_of(1, j, e, ow))
                        .map(|(r, s)| (r * ow + s) * k_ch),
                };
                match at {
                    Some(o) => dst.copy_from_slice(&src[o..][..k_ch]),
                    None => dst.fill(0.0),
                }
            }
        }
    }

    /// The window position whose tap `k` reads input row (column) `p`, if any.
    #[inline]
    fn window_of(&self, axis: usize, p: usize, k: usize, n_out: usize) -> Option<usize> {
        let q = (p + self.geo.pad[2 * axis]) as isize - k as isize;
        let s = self.geo.stride[axis] as isize;
        (q >= 0 && q % s == 0 && ((q / s) as usize) < n_out).then(|| (q / s) as usize)
    }

    /// dw = Σ over images of patchesᵀ · g, in CHUNKS fixed chunks of images added in order.
    unsafe fn back_filter(&self, ins: &[&[f32]], out: Out, parts: usize) {
        let [nb, h, w, c] = self.x;
        let [_, oh, ow, f] = self.y;
        let [kh, kw] = self.geo.size;
        let k = kh * kw * c;
        let len = k * f;
        let chunks = CHUNKS.min(nb).max(1);
        let bounds: Vec<usize> = (0..=chunks).map(|p| p * nb / chunks).collect();
        // Chunk 0 accumulates into the output itself; the others into partial buffers.
        let mut partials = vec![0.0f32; len * (chunks - 1)];
        let part_ptr = Out(partials.as_mut_ptr());
        let chunk = |ch: usize| {
            let dst = if ch == 0 {
                out.ptr()
            } else {
                // SAFETY: partial `ch` lies inside `partials`.
                unsafe { part_ptr.ptr().add((ch - 1) * len) }
            };
            // SAFETY: `dst` holds len floats written by this chunk only.
            unsafe { self.filter_chunk(ins, dst, bounds[ch], bounds[ch + 1], [h, w, c], [oh, ow, f]) };
        };
        if parts <= 1 {
            (0..chunks).for_each(chunk);
        } else {
            let per: Vec<usize> = (0..=parts).map(|p| p * chunks / parts).collect();
            rayon::scope(|s| {
                for wdw in per.windows(2).skip(1) {
                    let (c0, c1) = (wdw[0], wdw[1]);
                    let chunk = &chunk;
                    s.spawn(move |_| (c0..c1).for_each(chunk));
                }
                (per[0]..per[1]).for_each(chunk);
            });
        }
        // SAFETY: `out` holds len floats (contract of `run`).
        let dw = unsafe { std::slice::from_raw_parts_mut(out.0, len) };
        for p in partials.chunks_exact(len) {
            for (d, v) in dw.iter_mut().zip(p) {
                *d += v;
            }
        }
    }

    /// The filter gradient of images [b0, b1) into `dst` ([K, F]), panel by panel.
    #[allow(clippy::too_many_arguments)]
    unsafe fn filter_chunk(
        &self,
        ins: &[&[f32]],
        dst: *mut f32,
        b0: usize,
        b1: usize,
        [h, w, c]: [usize; 3],
        [oh, ow, f]: [usize; 3],
    ) {
        let [kh, kw] = self.geo.size;
        let k = kh * kw * c;
        let rows = oh * ow;
        let panel = (PANEL_BYTES / (4 * k)).clamp(8, rows.max(8));
        let panels = rows.div_ceil(panel);
        let panel = rows.div_ceil(panels.max(1));
        let path = sgemm::choose(k, f, panel);
        // SAFETY: `dst` holds k·f floats (caller).
        unsafe { std::ptr::write_bytes(dst, 0, k * f) };
        let mut acc = vec![0.0f32; k * f];
        with_scratch(panel * k, |a| {
            for b in b0..b1 {
                let img = &ins[0][b * h * w * c..][..h * w * c];
                let g = &ins[1][b * rows * f..][..rows * f];
                let mut r0 = 0;
                while r0 < rows {
                    let r1 = (r0 + panel).min(rows);
                    for r in r0..r1 {
                        let row = &mut a[(r - r0) * k..][..k];
                        self.pack(img, row, r / ow, r % ow, c, Patch::Forward { h, w });
                    }
                    // acc = aᵀ · g rows; then dst += acc (the GEMM core writes, not adds).
                    // SAFETY: `a` is (r1 − r0) × k read as its transpose (k × (r1 − r0)),
                    // g rows r0..r1 are (r1 − r0) × f, `acc` is k × f; no overlap.
                    unsafe {
                        sgemm::matmul(
                            path,
                            k,
                            f,
                            r1 - r0,
                            a.as_ptr(),
                            1,
                            k as isize,
                            g[r0 * f..].as_ptr(),
                            f as isize,
                            1,
                            acc.as_mut_ptr(),
                            f as isize,
                        );
                    }
                    // SAFETY: as above.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst, k * f) };
                    for (x, v) in d.iter_mut().zip(&acc) {
                        *x += v;
                    }
                    r0 = r1;
                }
            }
        });
    }

    /// Max or average pooling of one image.
    fn pool(&self, img: &[f32], y: &mut [f32], max: bool) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        let [kh, kw] = self.geo.size;
        let inv = 1.0 / (kh * kw) as f32;
        for i in 0..oh {
            for j in 0..ow {
                let out = &mut y[(i * ow + j) * c..][..c];
                let mut first = true;
                for a in 0..kh {
                    let Some(r) = self.geo.src(0, i, a, h) else { continue };
                    for e in 0..kw {
                        let Some(s) = self.geo.src(1, j, e, w) else { continue };
                        let x = &img[(r * w + s) * c..][..c];
                        if first {
                            out.copy_from_slice(x);
                            first = false;
                        } else if max {
                            for (o, &v) in out.iter_mut().zip(x) {
                                // The first maximum stays; a NaN wins and stays.
                                if !o.is_nan() && (v.is_nan() || v > *o) {
                                    *o = v;
                                }
                            }
                        } else {
                            for (o, &v) in out.iter_mut().zip(x) {
                                *o += v;
                            }
                        }
                    }
                }
                if !max {
                    for o in out.iter_mut() {
                        *o *= inv;
                    }
                }
            }
        }
    }

    /// The max-pool gradient of one image: each window's gradient to its first maximum
    /// (per channel, scanning the window in row-major order, as the reference does).
    fn max_pool_back(&self, img: &[f32], g: &[f32], dx: &mut [f32]) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        let [kh, kw] = self.geo.size;
        dx.fill(0.0);
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    let mut best: Option<usize> = None;
                    for a in 0..kh {
                        let Some(r) = self.geo.src(0, i, a, h) else { continue };
                        for e in 0..kw {
                            let Some(q) = self.geo.src(1, j, e, w) else { continue };
                            let at = (r * w + q) * c + ch;
                            let v = img[at];
                            let better = match best {
                                None => true,
                                Some(m) => !img[m].is_nan() && (v.is_nan() || v > img[m]),
                            };
                            if better {
                                best = Some(at);
                            }
                        }
                    }
                    if let Some(m) = best {
                        dx[m] += g[(i * ow + j) * c + ch];
                    }
                }
            }
        }
    }

    /// The average-pool gradient of one image.
    fn avg_pool_back(&self, g: &[f32], dx: &mut [f32]) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        let [kh, kw] = self.geo.size;
        let n = (kh * kw) as f32;
        dx.fill(0.0);
        for i in 0..oh {
            for j in 0..ow {
                let grow = &g[(i * ow + j) * c..][..c];
                for a in 0..kh {
                    let Some(r) = self.geo.src(0, i, a, h) else { continue };
                    for e in 0..kw {
                        let Some(s) = self.geo.src(1, j, e, w) else { continue };
                        let out = &mut dx[(r * w + s) * c..][..c];
                        for (o, &v) in out.iter_mut().zip(grow) {
                            *o += v / n;
                        }
                    }
                }
            }
        }
    }
}

/// Which patches a convolution GEMM packs: windows of the input (forward), or for each
/// input position the output positions whose windows read it (input gradient).
#[derive(Clone, Copy)]
enum Patch {
    Forward { h: usize, w: usize },
    Backward { oh: usize, ow: usize },
}

/// The filter [KH, KW, C, F] as [KH, KW, F, C]: the matrix of the input gradient's GEMM.
fn swap_filter(wt: &[f32], [kh, kw]: [usize; 2], c: usize, f: usize) -> Vec<f32> {
    let mut out = vec![0.0; wt.len()];
    for t in 0..kh * kw {
        for ci in 0..c {
            for fi in 0..f {
                out[(t * f + fi) * c + ci] = wt[(t * c + ci) * f + fi];
            }
        }
    }
    out
}
