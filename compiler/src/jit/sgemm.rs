//! The GEMM core: C = A·B in f32 through one of two paths behind one interface.
//!
//! - [`GemmPath::Jit`]: our own register-blocked micro-kernel, compiled by Cranelift at
//!   F32X4 width (the widest its x64 backend emits), driven by a cache-blocked Rust loop
//!   nest that packs A and B into contiguous panels;
//! - [`GemmPath::Crate`]: the `gemm` crate (AVX-512 where the host has it), single-threaded.
//!
//! [`choose`] picks the cheaper path for a shape from `gemm_costs.tsv`, a table measured once
//! by `cargo run --release -p dlc-benches --bin gemm_table` and committed, so the choice
//! never depends on timing at run time.
//!
//! # The micro-kernel
//!
//! `fn(k, a, b, c, c_rs_bytes, accumulate)` computes an MR×NR tile of C (12×4 by default,
//! [`KERNEL`]) from a packed A panel (MR rows, k-major: `a[p*MR + i]`) and a packed B panel
//! (NR columns, k-major: `b[p*NR + j]`). The 12 F32X4 accumulators stay in xmm registers
//! for the whole k loop, which is unrolled twice: per step of k, one vector load of B, 12
//! `vbroadcastss` loads of A (folded from memory) and 12 `vfmadd213ps`. The tile is stored
//! with row stride `c_rs_bytes`, overwriting C or adding to it (`accumulate != 0`).
//!
//! Why this shape (measured with `gemm_tune`, see docs/performance.md):
//! - The panel loads carry `readonly` + `can_move` (nothing writes the packed buffers during
//!   a call), so Cranelift's optimizer treats them as pure and places each next to its first
//!   use; plain loads stay in program order while the FMAs sink to the end of the loop body,
//!   which keeps every loaded value alive at once.
//! - Cranelift lowers `fma` to `vfmadd213ps`/`vfmadd132ps`, which overwrite a multiplicand,
//!   never the accumulator. A multiplicand used twice therefore costs a register copy, and a
//!   load used twice cannot fold into its instruction. With NR = 4 each broadcast feeds one
//!   FMA (with 6×8, two loads of the same A value would be merged by the optimizer unless
//!   the panel held two copies: [`Kernel::split_broadcasts`]).
//! - Each new accumulator lands in its broadcast's register, so the back edge of the loop
//!   moves the 12 accumulators back into place: unrolling by 2 halves those moves. Unrolling
//!   by 4 runs out of the 16 xmm registers Cranelift allocates (the optimizer computes one
//!   accumulator's chain through all unrolled steps at a time, so every step's B vector is
//!   live at once) and spills.
//! - The loop is tested at its head, so the accumulators leave the body through one edge
//!   (a value used twice makes the loads feeding it "used twice" too, and they stop
//!   folding), and the pointers come last among the loop's block parameters.
//!
//! # The driver
//!
//! BLIS-style loop nest: for each NC-wide column block of B, for each KC-deep slice of k,
//! pack the KC×NC block of B into NR-wide panels; for each MC-tall row block of A, pack the
//! MC×KC block into MR-tall panels; then run the micro-kernel over every MR×NR tile, one A
//! panel (in L1) against all the B panels of the block (in L2). The first k slice
//! overwrites C, later ones accumulate. Packing reads through arbitrary strides (a
//! transposed operand is packed as it lies, never copied first) and zero-pads the last
//! panels; tiles that stick out of C go through a small temporary tile.

use super::Jit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, Block, InstBuilder, MemFlagsData, Signature, UserFuncName, Value, types,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{Linkage, Module};
use std::cell::RefCell;
use std::sync::OnceLock;

/// The shape and code generation options of a micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Rows of the C tile.
    pub mr: usize,
    /// Columns of the C tile (a multiple of 4: F32X4 vectors).
    pub nr: usize,
    /// Steps of k per iteration of the main loop (a power of two).
    pub unroll: usize,
    /// Every FMA broadcasts its own copy of the A value, packed NR/4 times (otherwise one
    /// broadcast per row feeds NR/4 FMAs).
    pub split_broadcasts: bool,
    /// Cranelift's optimizer on (`opt_level = speed`, e-graph) or off (`none`: the
    /// instructions stay in the order emitted).
    pub optimize: bool,
    /// The packed panels' loads carry `readonly` + `can_move` (otherwise only `notrap` +
    /// `aligned`).
    pub readonly_loads: bool,
}

/// The micro-kernel [`Sgemm::new`] compiles.
pub const KERNEL: Kernel = Kernel {
    mr: 12,
    nr: 4,
    unroll: 2,
    split_broadcasts: false,
    optimize: true,
    readonly_loads: true,
};
/// Rows of the default micro-kernel's C tile.
pub const MR: usize = KERNEL.mr;
/// Columns of the default micro-kernel's C tile.
pub const NR: usize = KERNEL.nr;
/// Steps of k per iteration of the default micro-kernel's main loop.
pub const UNROLL: usize = KERNEL.unroll;

/// Which implementation runs a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmPath {
    /// The JIT's own F32X4 micro-kernel ([`Sgemm`]).
    Jit,
    /// The `gemm` crate, single-threaded.
    Crate,
}

impl std::fmt::Display for GemmPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GemmPath::Jit => "jit",
            GemmPath::Crate => "crate",
        })
    }
}

/// Cache blocking of the JIT path's loop nest (sizes in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Rows of A packed at once (rounded up to a multiple of MR).
    pub mc: usize,
    /// Depth of the k slices.
    pub kc: usize,
    /// Columns of B packed at once (rounded up to a multiple of NR).
    pub nc: usize,
}

/// The blocking [`matmul`] uses. The driver keeps one MR×KC panel of packed A in L1 (18 KiB
/// at KC = 384) while the KC×NR panels of B stream from L2, where the whole KC×NC block of
/// packed B (768 KiB) stays; MC only sizes the A buffer. Measured with `gemm_tune
/// blocking` at 512³ on the development machine (Zen 4: 32 KiB L1d, 1 MiB L2 per core),
/// where MC from 48 to 516, KC from 256 to 512 and NC from 512 to 4096 all lie within 3%.
pub const BLOCKING: Blocking = Blocking {
    mc: 144,
    kc: 384,
    nc: 512,
};

/// `fn(k, a, b, c, c_rs_bytes, accumulate)`, see the module documentation.
type KernelFn = unsafe extern "C" fn(u64, *const f32, *const f32, *mut f32, u64, u64);

/// The compiled micro-kernel with the module that owns its code.
pub struct Sgemm {
    /// Keeps the machine code alive (Cranelift frees code only with its module).
    jit: Jit,
    kernel: KernelFn,
    mr: usize,
    nr: usize,
    /// Copies of every A value in the packed panel (one per F32X4 column vector when each
    /// FMA broadcasts its own copy, else 1).
    a_rep: usize,
}

// SAFETY: after `Sgemm::with_kernel` returns, the module is never touched again (only the
// finalized, immutable machine code behind `kernel` is called), so sharing or moving it
// across threads cannot race.
unsafe impl Send for Sgemm {}
unsafe impl Sync for Sgemm {}

/// Cache-line aligned storage for packed panels.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// Packing buffers (A, B) of the calling thread, grown on demand and reused.
    static PACK: RefCell<(Vec<Line>, Vec<Line>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn floats(buf: &mut Vec<Line>, n: usize) -> *mut f32 {
    let lines = n.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0.0; 16]));
    }
    buf.as_mut_ptr() as *mut f32
}

impl Sgemm {
    /// Compiles the default micro-kernel (MR×NR, unrolled UNROLL times).
    pub fn new() -> Result<Sgemm, String> {
        Sgemm::with_kernel(KERNEL)
    }

    /// The process-wide kernel, compiled on first use.
    ///
    /// # Panics
    /// If Cranelift cannot compile for this machine.
    pub fn global() -> &'static Sgemm {
        static GLOBAL: OnceLock<Sgemm> = OnceLock::new();
        GLOBAL.get_or_init(|| Sgemm::new().expect("the GEMM micro-kernel compiles"))
    }

    /// Compiles the micro-kernel `kc` (for measuring alternatives: `nr` a multiple of 4,
    /// `mr·nr` ≤ 128, `unroll` a power of two).
    pub fn with_kernel(kc: Kernel) -> Result<Sgemm, String> {
        let Kernel { mr, nr, unroll, .. } = kc;
        if mr == 0 || nr == 0 || nr % 4 != 0 || mr * nr > 128 || !unroll.is_power_of_two() {
            return Err(format!("bad micro-kernel {kc:?}"));
        }
        // Without the e-graph, loads of the same address are not merged: no copies needed.
        let a_rep = if kc.split_broadcasts && kc.optimize {
            nr / 4
        } else {
            1
        };
        let mut jit = Jit::with_opt_level(if kc.optimize { "speed" } else { "none" })?;
        let kernel = compile(&mut jit, kc, a_rep)?;
        Ok(Sgemm {
            jit,
            kernel,
            mr,
            nr,
            a_rep,
        })
    }

    /// The CLIF text of the micro-kernel as emitted.
    pub fn clif(&self) -> &str {
        &self.jit.clif[0].1
    }

    /// The micro-kernel after Cranelift's optimizer (CLIF), then its machine code after
    /// register allocation, as Cranelift prints them.
    pub fn asm(&self) -> &str {
        &self.jit.clif[1].1
    }

    /// (MR, NR) of the micro-kernel.
    pub fn tile(&self) -> (usize, usize) {
        (self.mr, self.nr)
    }

    /// Floats in a packed A panel of depth `k` (B panels hold `NR·k`).
    pub fn a_panel_len(&self, k: usize) -> usize {
        self.mr * self.a_rep * k
    }

    /// Runs the micro-kernel once: the MR×NR tile at `c` (row stride `c_rs` floats)
    /// becomes (or, if `accumulate`, gains) the product of the packed panels `a` and `b`.
    ///
    /// # Safety
    /// `a` must hold [`Sgemm::a_panel_len`]`(k)` floats and `b` NR·k floats, both 16-byte
    /// aligned and unchanged during the call; `c` must be valid for MR rows of NR floats.
    pub unsafe fn tile_product(
        &self,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        c_rs: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded contract.
        unsafe { (self.kernel)(k as u64, a, b, c, (c_rs * 4) as u64, accumulate as u64) }
    }

    /// C = A·B with the default [`BLOCKING`]; see [`matmul`] for the arguments.
    ///
    /// # Safety
    /// As for [`matmul`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        a_rs: isize,
        a_cs: isize,
        b: *const f32,
        b_rs: isize,
        b_cs: isize,
        c: *mut f32,
        c_rs: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.matmul_blocked(BLOCKING, m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs) }
    }

    /// C = A·B with the given cache blocking; see [`matmul`] for the arguments.
    ///
    /// # Safety
    /// As for [`matmul`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_blocked(
        &self,
        blk: Blocking,
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        a_rs: isize,
        a_cs: isize,
        b: *const f32,
        b_rs: isize,
        b_cs: isize,
        c: *mut f32,
        c_rs: isize,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for i in 0..m {
                // SAFETY: row i of C has n elements (contract).
                unsafe { std::ptr::write_bytes(c.offset(i as isize * c_rs), 0, n) };
            }
            return;
        }
        let (mr, nr, a_rep) = (self.mr, self.nr, self.a_rep);
        let mc = blk.mc.max(1).div_ceil(mr) * mr;
        let nc = blk.nc.max(1).div_ceil(nr) * nr;
        let kc = blk.kc.max(1);
        PACK.with(|bufs| {
            let mut bufs = bufs.borrow_mut();
            let (abuf, bbuf) = &mut *bufs;
            let ap = floats(abuf, mc.min(m.div_ceil(mr) * mr) * kc.min(k) * a_rep);
            let bp = floats(bbuf, nc.min(n.div_ceil(nr) * nr) * kc.min(k));
            // The edge tile (mr·nr ≤ 128 floats).
            let mut tile = [Line([0.0; 16]); 8];
            let tmp = tile.as_mut_ptr() as *mut f32;
            for jc in (0..n).step_by(nc) {
                let ncur = nc.min(n - jc);
                for pc in (0..k).step_by(kc) {
                    let kcur = kc.min(k - pc);
                    let accumulate = (pc > 0) as u64;
                    // SAFETY: the packed block fits `bp` (sized above); reads stay inside
                    // B by the contract.
                    unsafe {
                        pack(
                            b.offset(pc as isize * b_rs + jc as isize * b_cs),
                            b_cs,
                            b_rs,
                            ncur,
                            kcur,
                            nr,
                            1,
                            bp,
                        )
                    };
                    for ic in (0..m).step_by(mc) {
                        let mcur = mc.min(m - ic);
                        // SAFETY: as for B.
                        unsafe {
                            pack(
                                a.offset(ic as isize * a_rs + pc as isize * a_cs),
                                a_rs,
                                a_cs,
                                mcur,
                                kcur,
                                mr,
                                a_rep,
                                ap,
                            )
                        };
                        // One A panel stays in L1 while the B panels stream from L2.
                        for ir in (0..mcur).step_by(mr) {
                            let rows = mr.min(mcur - ir);
                            // SAFETY: panel ir/mr of the packed block.
                            let apanel = unsafe { ap.add(ir * kcur * a_rep) };
                            for jr in (0..ncur).step_by(nr) {
                                let cols = nr.min(ncur - jr);
                                // SAFETY: panel jr/nr of the packed block; the tile at
                                // (ic+ir, jc+jr) lies inside C, or goes through `tmp`.
                                unsafe {
                                    let bpanel = bp.add(jr * kcur);
                                    let ct =
                                        c.offset((ic + ir) as isize * c_rs + (jc + jr) as isize);
                                    if rows == mr && cols == nr {
                                        (self.kernel)(
                                            kcur as u64,
                                            apanel,
                                            bpanel,
                                            ct,
                                            (c_rs * 4) as u64,
                                            accumulate,
                                        );
                                    } else {
                                        (self.kernel)(
                                            kcur as u64,
                                            apanel,
                                            bpanel,
                                            tmp,
                                            (nr * 4) as u64,
                                            0,
                                        );
                                        for i in 0..rows {
                                            let src = tmp.add(i * nr);
                                            let dst = ct.offset(i as isize * c_rs);
                                            for j in 0..cols {
                                                if accumulate != 0 {
                                                    *dst.add(j) += *src.add(j);
                                                } else {
                                                    *dst.add(j) = *src.add(j);
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Packs `len` lines (rows of A or columns of B) × `depth` steps of k into panels of
/// `w` lines, k-major within a panel, every value repeated `rep` times: copy r of element
/// (line l, step p) goes to `dst[(l / w) * depth * w * rep + (p * w + l % w) * rep + r]`.
/// `ls` is the stride between lines, `ps` between steps of k. The last panel is
/// zero-padded to `w` lines.
///
/// # Safety
/// `src` must be readable at every `l * ls + p * ps` for l < len, p < depth, and `dst`
/// writable for `len.div_ceil(w) * w * depth * rep` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn pack(
    src: *const f32,
    ls: isize,
    ps: isize,
    len: usize,
    depth: usize,
    w: usize,
    rep: usize,
    dst: *mut f32,
) {
    let wr = w * rep;
    for (panel, l0) in (0..len).step_by(w).enumerate() {
        let lines = w.min(len - l0);
        // SAFETY: inside the packed buffer and the source (contract).
        unsafe {
            let d = dst.add(panel * depth * wr);
            let s = src.offset(l0 as isize * ls);
            if lines < w {
                std::ptr::write_bytes(d, 0, depth * wr);
            }
            if ls == 1 && rep == 1 {
                // The lines of one step are contiguous: copy them (an element loop: a
                // `memcpy` call per handful of floats costs more than the copy).
                for p in 0..depth {
                    let (sp, dp) = (s.offset(p as isize * ps), d.add(p * w));
                    for l in 0..lines {
                        *dp.add(l) = *sp.add(l);
                    }
                }
            } else if ps == 1 {
                // Each line is contiguous in k: read it through.
                for l in 0..lines {
                    let sl = s.offset(l as isize * ls);
                    for p in 0..depth {
                        let v = *sl.add(p);
                        for r in 0..rep {
                            *d.add((p * w + l) * rep + r) = v;
                        }
                    }
                }
            } else {
                for p in 0..depth {
                    for l in 0..lines {
                        let v = *s.offset(l as isize * ls + p as isize * ps);
                        for r in 0..rep {
                            *d.add((p * w + l) * rep + r) = v;
                        }
                    }
                }
            }
        }
    }
}

/// Emits the micro-kernel: `mr` rows × `nv` F32X4 vectors of columns, k unrolled `unroll`.
fn compile(jit: &mut Jit, kc: Kernel, a_rep: usize) -> Result<KernelFn, String> {
    let (mr, nv, unroll) = (kc.mr, kc.nr / 4, kc.unroll);
    let i64t = types::I64;
    let mut sig = Signature::new(jit.module.isa().default_call_conv());
    for _ in 0..6 {
        sig.params.push(AbiParam::new(i64t));
    }
    jit.next_id += 1;
    let name = format!("sgemm_{mr}x{}_u{unroll}_{}", nv * 4, jit.next_id);
    let fid = jit
        .module
        .declare_function(&name, Linkage::Local, &sig)
        .map_err(|e| e.to_string())?;
    jit.ctx.func.signature = sig;
    jit.ctx.func.name = UserFuncName::user(0, fid.as_u32());
    let nr = nv * 4;
    // Packed panels: aligned, never written during the call.
    let panel = if kc.readonly_loads {
        MemFlagsData::trusted().with_readonly().with_can_move()
    } else {
        MemFlagsData::trusted()
    };
    // C: any alignment, written.
    let cflags = MemFlagsData::new().with_notrap();
    {
        let mut b = FunctionBuilder::new(&mut jit.ctx.func, &mut jit.fctx);
        let nacc = mr * nv;
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        // Loop blocks carry (accumulators…, a, b, count). The pointers come last: the
        // optimizer computes a block's outgoing values in this order, and computing the
        // next pointers after the loads lets them reuse the registers of the old ones.
        let with_state = |b: &mut FunctionBuilder| -> Block {
            let blk = b.create_block();
            for _ in 0..nacc {
                b.append_block_param(blk, types::F32X4);
            }
            for _ in 0..3 {
                b.append_block_param(blk, i64t);
            }
            blk
        };
        let main_head = with_state(&mut b);
        let main_body = with_state(&mut b);
        let tail_start = b.create_block();
        for t in std::iter::repeat_n(types::F32X4, nacc).chain([i64t, i64t]) {
            b.append_block_param(tail_start, t);
        }
        let tail_head = with_state(&mut b);
        let tail_body = with_state(&mut b);
        let store = b.create_block();
        for _ in 0..nacc {
            b.append_block_param(store, types::F32X4);
        }
        let store_over = b.create_block();
        let store_add = b.create_block();

        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (k, ap, bp, cp, crs, accf) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        let zf = b.ins().f32const(0.0);
        let zero = b.ins().splat(types::F32X4, zf);
        let n_main = b.ins().ushr_imm_u(k, unroll.trailing_zeros() as i64);
        let args = |a: Value, bb: Value, cnt: Value, acc: &[Value]| {
            let mut v = acc.to_vec();
            v.extend_from_slice(&[a, bb, cnt]);
            v
        };
        let acc0 = vec![zero; nacc];
        b.ins()
            .jump(main_head, &to_args(&args(ap, bp, n_main, &acc0)));

        // One step of k at offset `s` steps from the panel pointers.
        let step = |b: &mut FunctionBuilder, a: Value, bb: Value, s: usize, acc: &mut [Value]| {
            let bv: Vec<Value> = (0..nv)
                .map(|j| {
                    b.ins()
                        .load(types::F32X4, panel, bb, ((s * nr + 4 * j) * 4) as i32)
                })
                .collect();
            for i in 0..mr {
                let mut xv = None;
                for j in 0..nv {
                    // A value (i, s), copy j (if copies are packed): a broadcast load of
                    // its own folds into `vbroadcastss mem`, and the FMA may overwrite it.
                    let r = j.min(a_rep - 1);
                    if kc.split_broadcasts || xv.is_none() {
                        let off = (((s * mr + i) * a_rep + r) * 4) as i32;
                        let x = b.ins().load(types::F32, panel, a, off);
                        xv = Some(b.ins().splat(types::F32X4, x));
                    }
                    acc[i * nv + j] = b.ins().fma(xv.unwrap(), bv[j], acc[i * nv + j]);
                }
            }
        };

        // Main loop: `unroll` steps per iteration. The loop is tested at its head: the
        // accumulators leave the body through one edge only, as a value used twice
        // would keep its loads from folding into the instructions that use them.
        b.switch_to_block(main_head);
        let st = b.block_params(main_head).to_vec();
        b.ins().brif(
            st[nacc + 2],
            main_body,
            &to_args(&st),
            tail_start,
            &to_args(&st[..nacc + 2]),
        );
        b.switch_to_block(main_body);
        let st = b.block_params(main_body).to_vec();
        let mut acc = st[..nacc].to_vec();
        for s in 0..unroll {
            step(&mut b, st[nacc], st[nacc + 1], s, &mut acc);
        }
        let a1 = b
            .ins()
            .iadd_imm_s(st[nacc], (unroll * mr * a_rep * 4) as i64);
        let b1 = b.ins().iadd_imm_s(st[nacc + 1], (unroll * nr * 4) as i64);
        let c1 = b.ins().iadd_imm_s(st[nacc + 2], -1);
        b.ins().jump(main_head, &to_args(&args(a1, b1, c1, &acc)));

        // Tail: the remaining k % unroll steps, one at a time. (Their count is computed
        // here, once: computed before the main loop, it was recomputed in its head.)
        b.switch_to_block(tail_start);
        let st = b.block_params(tail_start).to_vec();
        let rem = b.ins().band_imm_u(k, (unroll - 1) as i64);
        b.ins().jump(
            tail_head,
            &to_args(&args(st[nacc], st[nacc + 1], rem, &st[..nacc])),
        );
        b.switch_to_block(tail_head);
        let st = b.block_params(tail_head).to_vec();
        b.ins().brif(
            st[nacc + 2],
            tail_body,
            &to_args(&st),
            store,
            &to_args(&st[..nacc]),
        );
        b.switch_to_block(tail_body);
        let st = b.block_params(tail_body).to_vec();
        let mut acc = st[..nacc].to_vec();
        step(&mut b, st[nacc], st[nacc + 1], 0, &mut acc);
        let a1 = b.ins().iadd_imm_s(st[nacc], (mr * a_rep * 4) as i64);
        let b1 = b.ins().iadd_imm_s(st[nacc + 1], (nr * 4) as i64);
        let c1 = b.ins().iadd_imm_s(st[nacc + 2], -1);
        b.ins().jump(tail_head, &to_args(&args(a1, b1, c1, &acc)));

        // Store the tile, overwriting C or adding to it.
        b.switch_to_block(store);
        let acc = b.block_params(store).to_vec();
        let is_acc = b.ins().icmp_imm_u(IntCC::NotEqual, accf, 0);
        b.ins().brif(is_acc, store_add, &[], store_over, &[]);
        for (blk, add) in [(store_over, false), (store_add, true)] {
            b.switch_to_block(blk);
            let mut row = cp;
            for i in 0..mr {
                if i > 0 {
                    row = b.ins().iadd(row, crs);
                }
                for j in 0..nv {
                    let off = (16 * j) as i32;
                    let mut v = acc[i * nv + j];
                    if add {
                        let old = b.ins().load(types::F32X4, cflags, row, off);
                        v = b.ins().fadd(old, v);
                    }
                    b.ins().store(cflags, v, row, off);
                }
            }
            b.ins().return_(&[]);
        }
        b.seal_all_blocks();
        b.finalize(jit.module.target_config());
    }
    let code = super::emit::define(jit, fid, name, true)?;
    // SAFETY: the function was just defined with exactly this signature.
    Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
}

fn to_args(v: &[Value]) -> Vec<cranelift_codegen::ir::BlockArg> {
    v.iter().map(|&x| x.into()).collect()
}

/// C = A·B through `path`, single-threaded: C (m×n) is overwritten, never read.
///
/// Element (i, p) of A is `*a.offset(i * a_rs + p * a_cs)`, element (p, j) of B is
/// `*b.offset(p * b_rs + j * b_cs)` (a transposed operand just swaps its strides), and
/// element (i, j) of C is `*c.offset(i * c_rs + j)`. To compute rows [r0, r1) of a larger
/// product, pass `m = r1 - r0`, `a` advanced by `r0 * a_rs` and `c` by `r0 * c_rs`: each row
/// of C depends only on its row of A, so row blocks can run on different threads.
///
/// # Safety
/// - `a` must be valid for reads at every (i, p) offset above for i < m, p < k; `b` for every
///   (p, j) with p < k, j < n; `c` valid for writes at every (i, j), i < m, j < n.
/// - C must not overlap A or B, and no other thread may write A or B during the call
///   (the JIT kernel's loads of its packed copies are marked read-only, and the packing
///   reads A and B as they are during the call).
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    path: GemmPath,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
) {
    match path {
        // SAFETY: forwarded contract.
        GemmPath::Jit => unsafe {
            Sgemm::global().matmul(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs)
        },
        GemmPath::Crate => {
            if m == 0 || n == 0 {
                return;
            }
            // SAFETY: forwarded contract; `read_dst = false`, so C is only written.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c,
                    1,
                    c_rs,
                    false,
                    a,
                    a_cs,
                    a_rs,
                    b,
                    b_cs,
                    b_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        }
    }
}

/// Rows [r0, r1) of C = A·B through `path`, single-threaded, for A of any number of rows:
/// [`matmul`] on row `r0` of A and C. `a` and `c` point at row 0; the other arguments are
/// those of [`matmul`]. Disjoint row ranges of one product may run on different threads.
///
/// # Safety
/// As for [`matmul`] with `m = r1 - r0` on the pointers advanced to row `r0`; `r0 ≤ r1`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_rows(
    path: GemmPath,
    r0: usize,
    r1: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
) {
    debug_assert!(r0 <= r1);
    // SAFETY: rows r0.. of A and C lie inside their buffers (contract); `wrapping_offset`
    // keeps an empty range (r0 = r1 at the end) well-defined.
    unsafe {
        matmul(
            path,
            r1 - r0,
            n,
            k,
            a.wrapping_offset(r0 as isize * a_rs),
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            c.wrapping_offset(r0 as isize * c_rs),
            c_rs,
        )
    }
}

/// The measured cost table: `gemm_costs.tsv` (columns m n k jit_ns crate_ns).
pub const COSTS_TSV: &str = include_str!("gemm_costs.tsv");

/// One row of the cost table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub jit_ns: f64,
    pub crate_ns: f64,
}

impl Cost {
    /// The cheaper path for this shape (the crate on a tie).
    pub fn cheaper(&self) -> GemmPath {
        if self.jit_ns < self.crate_ns {
            GemmPath::Jit
        } else {
            GemmPath::Crate
        }
    }
}

/// Parses a cost table: a header line, then `m n k jit_ns crate_ns` per line (tab- or
/// space-separated); `#` starts a comment line.
pub fn parse_costs(text: &str) -> Result<Vec<Cost>, String> {
    let mut rows = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('m') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "gemm cost table line {}: 5 columns expected",
                no + 1
            ));
        }
        let bad = |e: &dyn std::fmt::Display| format!("gemm cost table line {}: {e}", no + 1);
        rows.push(Cost {
            m: f[0].parse().map_err(|e| bad(&e))?,
            n: f[1].parse().map_err(|e| bad(&e))?,
            k: f[2].parse().map_err(|e| bad(&e))?,
            jit_ns: f[3].parse().map_err(|e| bad(&e))?,
            crate_ns: f[4].parse().map_err(|e| bad(&e))?,
        });
    }
    Ok(rows)
}

/// The committed cost table, parsed once.
pub fn costs() -> &'static [Cost] {
    static COSTS: OnceLock<Vec<Cost>> = OnceLock::new();
    COSTS.get_or_init(|| parse_costs(COSTS_TSV).expect("gemm_costs.tsv parses"))
}

/// The measured shape nearest to (m, n, k): least squared distance of the logarithms
/// (sizes below 1 count as 1); the first such row of the table on a tie.
pub fn nearest(table: &[Cost], m: usize, n: usize, k: usize) -> Option<&Cost> {
    let l = |x: usize| (x.max(1) as f64).ln();
    let d = |c: &Cost| (l(c.m) - l(m)).powi(2) + (l(c.n) - l(n)).powi(2) + (l(c.k) - l(k)).powi(2);
    let mut best: Option<(&Cost, f64)> = None;
    for c in table {
        let dc = d(c);
        if best.is_none_or(|(_, db)| dc < db) {
            best = Some((c, dc));
        }
    }
    best.map(|(c, _)| c)
}

/// The GEMM path for an (m×k)·(k×n) product on one thread: the cheaper path of the
/// nearest shape in the committed cost table. Deterministic: no timing at run time.
pub fn choose(m: usize, n: usize, k: usize) -> GemmPath {
    nearest(costs(), m, n, k).map_or(GemmPath::Crate, Cost::cheaper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_covers_the_grid() {
        let t = costs();
        assert!(t.len() >= 100, "{} rows", t.len());
        for m in [1, 64, 1024] {
            for n in [10, 512, 1024] {
                assert!(t.iter().any(|c| (c.m, c.n, c.k) == (m, n, 512)), "{m} {n}");
            }
        }
        assert!(t.iter().all(|c| c.jit_ns > 0.0 && c.crate_ns > 0.0));
    }

    #[test]
    fn choose_picks_the_cheaper_path_of_a_measured_row() {
        let t = costs();
        // Every measured shape maps to itself, and so does a shape 10% away from it.
        for c in [t[0], t[t.len() / 2], t[t.len() - 1]] {
            assert_eq!(choose(c.m, c.n, c.k), c.cheaper(), "{c:?}");
            let near = |x: usize| x + x / 10;
            assert_eq!(nearest(t, near(c.m), near(c.n), near(c.k)), Some(&c));
        }
        // Every row: the nearest shape of a measured one is itself.
        for c in t {
            assert_eq!(choose(c.m, c.n, c.k), c.cheaper(), "{c:?}");
        }
        for (m, n, k) in [
            (1, 10, 784),
            (64, 128, 784),
            (512, 512, 512),
            (1024, 1024, 1024),
        ] {
            let c = t.iter().find(|c| (c.m, c.n, c.k) == (m, n, k)).unwrap();
            assert_eq!(choose(m, n, k), c.cheaper(), "{c:?}");
        }
    }

    #[test]
    fn nearest_is_in_log_space_and_first_on_a_tie() {
        let t =
            parse_costs("m\tn\tk\tjit_ns\tcrate_ns\n8 8 8 1 2\n32 8 8 2 1\n2 8 8 5 5\n").unwrap();
        // 16 is as far from 8 as from 32 in log space: the first row wins.
        assert_eq!(nearest(&t, 16, 8, 8).unwrap().m, 8);
        // 18 is nearer 8 than 32 in plain distance, but nearer 32 in log space.
        assert_eq!(nearest(&t, 18, 8, 8).unwrap().m, 32);
        assert_eq!(nearest(&t, 0, 8, 8).unwrap().m, 2);
        assert_eq!(t[0].cheaper(), GemmPath::Jit);
        assert_eq!(t[1].cheaper(), GemmPath::Crate);
        assert_eq!(t[2].cheaper(), GemmPath::Crate);
        assert!(nearest(&[], 1, 1, 1).is_none());
    }
}
