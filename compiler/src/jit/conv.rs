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
const PANEL_BYTES: usize = 256 << 10;

/// Multiply-adds (or window reads) from which a window kernel splits across threads.
pub const PARALLEL_WINDOW_MIN: usize = 1 << 18;

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
    /// contiguous row-major. `epilogue(b0, b1)`, given only for per-image ops
    /// ([`per_image`](Self::per_image)), runs right after images [b0, b1) of the result
    /// are complete, on the same thread.
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
            // Not per image: the plan runs its epilogue after it (`per_image`).
            debug_assert!(
                epilogue.is_none(),
                "a filter gradient has no per-image epilogue"
            );
            // SAFETY: forwarded contract.
            unsafe { self.back_filter(ins, out, parts) };
            return;
        }
        let prepared = match self.op {
            WinOp::ConvBackInput => Some(swap_filter(ins[1], self.geo.size, self.x[3], self.y[3])),
            _ => None,
        };
        let range = |b0: usize, b1: usize| {
            if matches!(self.op, WinOp::Conv | WinOp::ConvBackInput) {
                // SAFETY: images [b0, b1) of the output are written by this call only.
                unsafe { self.conv_images(ins, prepared.as_deref(), out, b0, b1, epilogue) };
                return;
            }
            for b in b0..b1 {
                // SAFETY: image b's part of the output is written by this call only.
                unsafe { self.image(ins, out, b) };
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

    /// Images [b0, b1) of a convolution or its input gradient: GEMMs on panels of packed
    /// rows (across images), each image's epilogue as soon as its last row is done.
    unsafe fn conv_images(
        &self,
        ins: &[&[f32]],
        swapped: Option<&[f32]>,
        out: Out,
        b0: usize,
        b1: usize,
        epilogue: Option<&(dyn Fn(usize, usize) + Sync)>,
    ) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, f] = self.y;
        // Rows and columns of a result image, its channels (GEMM columns), channels packed
        // per tap, and the patches.
        let (mat, rh, rw, n, k_ch, patch) = match self.op {
            WinOp::Conv => (ins[1], oh, ow, f, c, Patch::Forward { h, w }),
            _ => (
                swapped.expect("the swapped filter"),
                h,
                w,
                c,
                f,
                Patch::Backward { oh, ow },
            ),
        };
        let src_img = match patch {
            Patch::Forward { .. } => h * w * c,
            Patch::Backward { .. } => oh * ow * f,
        };
        let k = self.geo.size[0] * self.geo.size[1] * k_ch;
        let per = rh * rw;
        let (r0, r1) = (b0 * per, b1 * per);
        let panel = (PANEL_BYTES / (4 * k)).max(8).min((r1 - r0).max(1));
        let path = sgemm::choose(panel, n, k);
        let mut done = b0;
        with_scratch(panel * k, |a| {
            let mut p0 = r0;
            while p0 < r1 {
                let p1 = (p0 + panel).min(r1);
                // (image, row, column) of row p0, then counted up: no division per row.
                let mut at = Pos::of(p0, rh, rw);
                for row in a[..(p1 - p0) * k].chunks_exact_mut(k) {
                    let img = &ins[0][at.b * src_img..][..src_img];
                    self.pack(img, row, at.i, at.j, k_ch, patch);
                    at.next(rh, rw);
                }
                // SAFETY: `a` holds (p1 − p0) × k packed floats, `mat` k × n, and the
                // output rows p0..p1 of n floats (inside `out`); the scratch overlaps
                // neither.
                unsafe {
                    sgemm::matmul(
                        path,
                        p1 - p0,
                        n,
                        k,
                        a.as_ptr(),
                        k as isize,
                        1,
                        mat.as_ptr(),
                        n as isize,
                        1,
                        out.ptr().add(p0 * n),
                        n as isize,
                    );
                }
                p0 = p1;
                let complete = p0 / per;
                if complete > done {
                    if let Some(e) = epilogue {
                        e(done, complete);
                    }
                    done = complete;
                }
            }
        });
    }

    /// Image `b` of a pooling op, compiled for AVX2 + FMA where the machine has them.
    unsafe fn image(&self, ins: &[&[f32]], out: Out, b: usize) {
        if avx2() {
            // SAFETY: the features were detected; forwarded contract.
            unsafe { self.image_avx2(ins, out, b) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { self.image_any(ins, out, b) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn image_avx2(&self, ins: &[&[f32]], out: Out, b: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.image_any(ins, out, b) }
    }

    #[inline(always)]
    unsafe fn image_any(&self, ins: &[&[f32]], out: Out, b: usize) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        // SAFETY (each arm): image b's part of the output, inside `out` (contract of `run`).
        unsafe {
            match self.op {
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
                _ => unreachable!("convolutions run by conv_images and back_filter"),
            }
        }
    }

    /// One packed row: for each tap (kh, kw) the `k_ch` values the row's window reads, or
    /// zeros where it falls outside.
    #[inline]
    fn pack(&self, src: &[f32], row: &mut [f32], i: usize, j: usize, k_ch: usize, patch: Patch) {
        let [kh, kw] = self.geo.size;
        for a in 0..kh {
            if let Patch::Forward { h, w } = patch {
                // The kw taps of a kernel row read kw neighbouring columns: one copy when
                // they are all inside.
                let s0 = (j * self.geo.stride[1]) as isize - self.geo.pad[2] as isize;
                if let Some(r) = self.geo.src(0, i, a, h)
                    && s0 >= 0
                    && s0 as usize + kw <= w
                {
                    let from = (r * w + s0 as usize) * k_ch;
                    copy(
                        &mut row[a * kw * k_ch..][..kw * k_ch],
                        &src[from..][..kw * k_ch],
                    );
                    continue;
                }
            }
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
                    Some(o) => copy(dst, &src[o..][..k_ch]),
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
        if s == 1 {
            // No division (packing calls this for every tap of every row).
            return (q >= 0 && (q as usize) < n_out).then_some(q as usize);
        }
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
            unsafe {
                self.filter_chunk(ins, dst, bounds[ch], bounds[ch + 1], [h, w, c], [oh, ow, f])
            };
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
        let per = oh * ow;
        let (r0, r1) = (b0 * per, b1 * per);
        let panel = (PANEL_BYTES / (4 * k)).max(8).min((r1 - r0).max(1));
        let path = sgemm::choose(f, k, panel);
        // SAFETY: `dst` holds k·f floats (caller).
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, k * f) };
        dst.fill(0.0);
        let mut acc = vec![0.0f32; k * f];
        with_scratch(panel * k, |a| {
            let mut p0 = r0;
            while p0 < r1 {
                let p1 = (p0 + panel).min(r1);
                let mut at = Pos::of(p0, oh, ow);
                for row in a[..(p1 - p0) * k].chunks_exact_mut(k) {
                    let img = &ins[0][at.b * h * w * c..][..h * w * c];
                    self.pack(img, row, at.i, at.j, c, Patch::Forward { h, w });
                    at.next(oh, ow);
                }
                // acc = (aᵀ · g)ᵀ = gᵀ · a ([f, k]: the GEMM's vectors run along the k
                // patch columns), then dst += accᵀ (the GEMM core writes, not adds).
                // SAFETY: g rows p0..p1 are (p1 − p0) × f, read as their transpose; `a` is
                // (p1 − p0) × k; `acc` is f × k; no overlap.
                unsafe {
                    sgemm::matmul(
                        path,
                        f,
                        k,
                        p1 - p0,
                        ins[1][p0 * f..].as_ptr(),
                        1,
                        f as isize,
                        a.as_ptr(),
                        k as isize,
                        1,
                        acc.as_mut_ptr(),
                        k as isize,
                    );
                }
                for (kk, drow) in dst.chunks_exact_mut(f).enumerate() {
                    for (i, d) in drow.iter_mut().enumerate() {
                        *d += acc[i * k + kk];
                    }
                }
                p0 = p1;
            }
        });
    }

    /// Max or average pooling of one image. Pooling windows have no padding, so every tap
    /// is inside. Max pooling runs on blocks of `LANES` channels held in fixed-size arrays
    /// (one vector register with AVX2), the channel tail lane by lane.
    #[inline(always)]
    fn pool(&self, img: &[f32], y: &mut [f32], max: bool) {
        let [_, _, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        let [kh, kw] = self.geo.size;
        let [sh, sw] = self.geo.stride;
        debug_assert_eq!(self.geo.pad, [0; 4], "pooling windows are not padded");
        let inv = 1.0 / (kh * kw) as f32;
        let tap = |i: usize, j: usize, t: usize| ((i * sh + t / kw) * w + j * sw + t % kw) * c;
        for i in 0..oh {
            for j in 0..ow {
                let o0 = (i * ow + j) * c;
                let mut ch = 0;
                if max {
                    while ch + LANES <= c {
                        let mut m = load(img, tap(i, j, 0) + ch);
                        for t in 1..kh * kw {
                            let v = load(img, tap(i, j, t) + ch);
                            for l in 0..LANES {
                                m[l] = if takes(v[l], m[l]) { v[l] } else { m[l] };
                            }
                        }
                        y[o0 + ch..][..LANES].copy_from_slice(&m);
                        ch += LANES;
                    }
                }
                for ch in ch..c {
                    let mut m = img[tap(i, j, 0) + ch];
                    for t in 1..kh * kw {
                        let v = img[tap(i, j, t) + ch];
                        m = if !max {
                            m + v
                        } else if takes(v, m) {
                            v
                        } else {
                            m
                        };
                    }
                    y[o0 + ch] = if max { m } else { m * inv };
                }
            }
        }
    }

    /// The max-pool gradient of one image: each window's gradient goes to its first
    /// maximum per channel (the window scanned in row-major order, as the reference
    /// does). Per window and block of `LANES` channels, the winning tap of every channel
    /// is found first (tap numbers kept as exact f32 values), then each tap takes the
    /// gradient where it won. Windows that tile the image exactly (stride = size, no rest)
    /// write every element once; otherwise the image is zeroed and windows add up.
    #[inline(always)]
    fn max_pool_back(&self, img: &[f32], g: &[f32], dx: &mut [f32]) {
        let [_, h, w, c] = self.x;
        let [_, oh, ow, _] = self.y;
        let [kh, kw] = self.geo.size;
        let [sh, sw] = self.geo.stride;
        let tiled = [sh, sw] == [kh, kw] && oh * sh == h && ow * sw == w;
        if !tiled {
            dx.fill(0.0);
        }
        let tap = |i: usize, j: usize, t: usize| ((i * sh + t / kw) * w + j * sw + t % kw) * c;
        for i in 0..oh {
            for j in 0..ow {
                let g0 = (i * ow + j) * c;
                let mut ch = 0;
                while ch + LANES <= c {
                    let mut best = load(img, tap(i, j, 0) + ch);
                    let mut win = [0.0f32; LANES];
                    for t in 1..kh * kw {
                        let v = load(img, tap(i, j, t) + ch);
                        let tf = t as f32;
                        for l in 0..LANES {
                            let take = takes(v[l], best[l]);
                            best[l] = if take { v[l] } else { best[l] };
                            win[l] = if take { tf } else { win[l] };
                        }
                    }
                    let gv = load(g, g0 + ch);
                    for t in 0..kh * kw {
                        let tf = t as f32;
                        let d: &mut [f32; LANES] = (&mut dx[tap(i, j, t) + ch..][..LANES])
                            .try_into()
                            .expect("a block of LANES");
                        for l in 0..LANES {
                            let v = if win[l] == tf { gv[l] } else { 0.0 };
                            d[l] = if tiled { v } else { d[l] + v };
                        }
                    }
                    ch += LANES;
                }
                for ch in ch..c {
                    let mut best = tap(i, j, 0) + ch;
                    for t in 1..kh * kw {
                        let p = tap(i, j, t) + ch;
                        if takes(img[p], img[best]) {
                            best = p;
                        }
                    }
                    for t in 0..kh * kw {
                        let p = tap(i, j, t) + ch;
                        let v = if p == best { g[g0 + ch] } else { 0.0 };
                        dx[p] = if tiled { v } else { dx[p] + v };
                    }
                }
            }
        }
    }

    /// The average-pool gradient of one image.
    #[inline(always)]
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
                    let Some(r) = self.geo.src(0, i, a, h) else {
                        continue;
                    };
                    for e in 0..kw {
                        let Some(s) = self.geo.src(1, j, e, w) else {
                            continue;
                        };
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

/// Whether this machine has AVX2 and FMA (the pooling and packing loops are compiled for
/// them too; the same operations in the same order, so the same bits).
fn avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// `dst` = `src`. Packing copies runs of a few floats (a 3×3 kernel row of one channel is
/// three): those are moved inline, longer ones by `copy_from_slice` (a `memcpy` call).
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => {
                    let d: &mut [f32; $n] = dst.try_into().expect("length");
                    *d = src.try_into().expect("length");
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 16)
}

/// Channels per block of the pooling loops (one AVX2 vector).
const LANES: usize = 8;

/// `LANES` floats from `at`, as a fixed-size array (kept in a register).
#[inline(always)]
fn load(a: &[f32], at: usize) -> [f32; LANES] {
    a[at..at + LANES].try_into().expect("a block of LANES")
}

/// Whether `v` replaces the running maximum `best` of a window scanned in order: it is
/// larger, or a NaN while `best` is not (the first maximum stays; a NaN wins and stays).
/// Non-short-circuit `|` and `&`, so loops over lanes stay branch-free.
#[inline(always)]
fn takes(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// The (image, row, column) of a GEMM row, advanced row by row without dividing.
struct Pos {
    b: usize,
    i: usize,
    j: usize,
}

impl Pos {
    fn of(r: usize, rows: usize, cols: usize) -> Pos {
        let per = rows * cols;
        Pos {
            b: r / per,
            i: r % per / cols,
            j: r % cols,
        }
    }

    #[inline(always)]
    fn next(&mut self, rows: usize, cols: usize) {
        self.j += 1;
        if self.j == cols {
            self.j = 0;
            self.i += 1;
            if self.i == rows {
                self.i = 0;
                self.b += 1;
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
