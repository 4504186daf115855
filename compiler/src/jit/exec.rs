//! Running an optimized graph natively (`plan.rs` decides how each kernel runs,
//! `buffers.rs` where its values live). Per kernel body and batch size, a plan is made
//! once and cached:
//!
//! - loop kernels (elementwise bodies, the optimizer update) run as one Cranelift
//!   function;
//! - matmul kernels run the GEMM core (transposed operands read through strides, no
//!   copies) and their elementwise epilogue as a Cranelift loop kernel, on each row panel
//!   of the product right after the GEMM computed it, on the same thread;
//! - reduce and softmax-xent kernels whose reductions run along or across the rows of
//!   `[B, C]` values run as one Cranelift row kernel (`rows.rs`); other bodies with
//!   reductions are staged: their elementwise levels run as native loops, their
//!   reductions by the reference semantics (ndarray) in between;
//! - window kernels (convolution, pooling) run natively with their epilogue (`conv.rs`),
//!   data movement (transpose, slice, concat, gather, scatter-add) natively (`copy.rs`);
//! - anything else (batched matmuls) runs through the reference interpreter until its
//!   code generator exists. [`JitGraph::native_kernels`] counts the
//!   fully native kernels; `dlc compile --emit plan` shows the plan of each.

use super::Jit;
use super::buffers::{Layout, Pool, inplace_candidates};
use super::conv::WindowCore;
use super::loops::LoopKernel;
use super::plan::{Operand, Plan, Stage, sym_key};
use super::sgemm::{self, GemmPath};
use crate::interp::{self, Env, Observer};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, CowArray, IxDyn};
use std::collections::HashMap;

/// Output elements from which a loop kernel is split across threads, for a loop of plain
/// arithmetic; each inline transcendental per element counts as [`TRANSCENDENTAL_WEIGHT`]
/// more elements.
pub const PARALLEL_LOOP_MIN: usize = 1 << 17;

/// A polynomial `exp`/`tanh`/`sigmoid` costs about as much as this many elementwise ops.
const TRANSCENDENTAL_WEIGHT: usize = 4;

/// Multiply-adds from which a gemm is split across threads.
pub const PARALLEL_GEMM_MIN: usize = 1 << 22;

/// Row panels of a product whose epilogue runs right after it hold this many bytes of it
/// (the last one up to twice as many): half the 1 MB L2 of a Zen 4 core, so the panel is
/// still there when its epilogue reads it.
const EPILOGUE_PANEL_BYTES: usize = 512 << 10;

/// What a schedule is made for: the requested outputs and the donated leaves.
pub(super) type ScheduleKey = (Vec<NodeId>, Donations);

/// Symbolic sizes in canonical order (`sym_key`).
pub(super) type SymKey = Vec<(String, usize)>;

/// A loop kernel's pointer table and the buffers behind it (see `loop_args`).
struct LoopArgs<'v> {
    _contiguous: Vec<CowArray<'v, f32, IxDyn>>,
    outs: Vec<Option<ArrayD<f32>>>,
    ptrs: Vec<*mut f32>,
}

/// Whether no output of a matmul kernel is written over one of its operands: then its
/// epilogue may run panel by panel (otherwise later panels would read overwritten rows).
fn writes_clear_of_operands(
    k: &LoopKernel,
    operands: &[ArrayViewD<f32>],
    into: &[(usize, *mut f32)],
) -> bool {
    let span = |p: *const f32, len: usize| (p as usize, p as usize + 4 * len);
    let operands: Vec<(usize, usize)> =
        operands.iter().map(|a| span(a.as_ptr(), a.len())).collect();
    into.iter().all(|&(j, p)| {
        let (lo, hi) = span(p, k.outputs[j].iter().product());
        operands.iter().all(|&(x, y)| hi <= x || y <= lo)
    })
}

/// A loop kernel called on the fraction [a/of, b/of) of its outputs, with the pointer
/// table `table` (see `loop_args`), which must outlive the calls. Used where an epilogue
/// runs on a part of a product or of a window op's result as soon as that part is done.
fn fraction_fn(
    k: &LoopKernel,
    env: &Env<f32>,
    table: &[*mut f32],
    of: usize,
) -> impl Fn(usize, usize) + Sync + use<> {
    let (f, seed, step, rows) = (k.f, env.seed, env.step, env.row_offset);
    let table = table.as_ptr() as usize;
    // SAFETY: as in `call_loop_into`: the table holds the kernel's buffers, each of the
    // shape it was compiled for; the caller calls disjoint fractions of outputs whose
    // inputs are complete.
    move |a: usize, b: usize| unsafe {
        f(
            table as *const *mut f32,
            seed,
            step,
            a as u64,
            b as u64,
            of as u64,
            rows,
        )
    }
}

/// The shape [m, n] of op(a)·op(b) for row-major matrices (operands of rank > 2 are
/// matrices of rows: `plan::rows_cols`).
fn product_shape(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>, ta: bool, tb: bool) -> (usize, usize) {
    let (ar, ac) = super::plan::rows_cols(a.shape());
    let (br, bc) = super::plan::rows_cols(b.shape());
    let m = if ta { ac } else { ar };
    let n = if tb { br } else { bc };
    (m, n)
}

pub struct JitGraph {
    pub(super) graph: Graph,
    pub(super) jit: Jit,
    /// Plans by symbolic sizes, then by kernel body.
    pub(super) plans: HashMap<Vec<(String, usize)>, HashMap<u32, Plan>>,
    /// Schedules by requested outputs and donated leaves (a few per model: found by
    /// comparison, without hashing or copying the key each run).
    pub(super) prepared: Vec<(ScheduleKey, std::rc::Rc<Prepared>)>,
    pub(super) threads: usize,
    pub(super) pool: std::cell::RefCell<Pool>,
    /// Memory layouts by schedule (`Prepared::id`) and sizes (`sym_key`).
    pub(super) layouts: Vec<(usize, SymKey, Layout)>,
    /// Seconds spent per kernel body, when `DLC_PROFILE` is set (printed on drop).
    pub(super) profile: Option<HashMap<u32, (f64, usize)>>,
    /// Scan bodies, compiled as graphs of their own, by body.
    pub(super) scans: HashMap<u32, JitGraph>,
    /// While a scan runs this graph as its body: the captured operands (which no step
    /// changes) and the right operands of products packed from them (`packed.rs`).
    pub(super) invariant: std::cell::RefCell<Invariant>,
}

/// Operands that stay the same over the steps of one scan run, by (address, length), and
/// their packings for products, by (address, transposed).
#[derive(Default)]
pub(super) struct Invariant {
    operands: Vec<(usize, usize)>,
    packed: Vec<((usize, bool), std::sync::Arc<super::packed::PackedB>)>,
}

impl Drop for JitGraph {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let mut rows: Vec<(&u32, &(f64, usize))> = p.iter().collect();
            rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
            for (body, (secs, calls)) in rows {
                eprintln!(
                    "profile: kernel body={body}: {:.3} ms/call over {calls} calls",
                    secs * 1e3 / *calls as f64
                );
            }
        }
    }
}

/// (output index, leaf name) pairs: outputs given a donated leaf's buffer.
type Donations = Vec<(usize, String)>;

/// What running one node of the schedule means, worked out once per set of outputs.
pub(super) enum Action {
    Leaf(String),
    Kernel {
        body: u32,
        output: u32,
    },
    /// Output `output` of a scan (all outputs of one scan are computed by one run).
    Scan {
        body: u32,
        output: u32,
        carries: usize,
        xs: usize,
        reverse: bool,
    },
    Reshape(crate::types::Shape),
    Other,
}

/// A schedule with operand positions, so a run does no graph walks.
pub(super) struct Prepared {
    /// Distinct per schedule (keys its memory layouts).
    pub(super) id: usize,
    pub(super) order: Vec<NodeId>,
    pub(super) actions: Vec<Action>,
    /// Operands of each scheduled node, as positions in `order`.
    pub(super) inputs: Vec<Vec<usize>>,
    /// Positions of the requested outputs.
    pub(super) roots: Vec<usize>,
    /// Outputs a kernel may write over a donated leaf, by the schedule position of the
    /// kernel's first node.
    pub(super) inplace: HashMap<usize, Vec<InPlace>>,
}

/// A kernel output written into the buffer of a donated leaf (an in-place update).
pub(super) struct InPlace {
    /// Kernel output and kernel operand (the leaf).
    pub(super) output: usize,
    pub(super) operand: usize,
    pub(super) leaf: String,
    /// Index of the output in the requested outputs.
    pub(super) root: usize,
}

impl JitGraph {
    pub fn new(graph: Graph, threads: usize) -> Result<JitGraph, String> {
        let profile = std::env::var_os("DLC_PROFILE").map(|_| HashMap::new());
        Ok(JitGraph {
            profile,
            graph,
            jit: Jit::new()?,
            plans: HashMap::new(),
            prepared: Vec::new(),
            threads: threads.max(1),
            pool: Default::default(),
            layouts: Vec::new(),
            scans: HashMap::new(),
            invariant: Default::default(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The CLIF of every kernel compiled so far.
    pub fn clif(&self) -> &[(String, String)] {
        &self.jit.clif
    }

    pub(super) fn call_loop(
        &self,
        k: &LoopKernel,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
    ) -> Vec<ArrayD<f32>> {
        self.call_loop_into(k, ins, env, &[])
            .into_iter()
            .map(|o| o.expect("no output was written in place"))
            .collect()
    }

    /// A loop kernel's pointer table: its inputs (made contiguous; `extra`, when given, is
    /// one more input after them), then its outputs: pool buffers, or for outputs listed
    /// in `into` (output, buffer) the given buffer (an in-place update).
    fn loop_args<'v>(
        &self,
        k: &LoopKernel,
        ins: &'v [ArrayViewD<'v, f32>],
        extra: Option<*mut f32>,
        into: &[(usize, *mut f32)],
    ) -> LoopArgs<'v> {
        // The kernel reads its pointer table at fixed positions: a table of another
        // length would be read out of bounds.
        assert_eq!(
            ins.len() + usize::from(extra.is_some()),
            k.inputs,
            "a loop kernel called with another number of inputs than it was compiled for"
        );
        let contiguous: Vec<CowArray<'v, f32, IxDyn>> =
            ins.iter().map(|a| a.as_standard_layout()).collect();
        let mut outs: Vec<Option<ArrayD<f32>>> = {
            let mut pool = self.pool.borrow_mut();
            (0..k.outputs.len())
                .map(|j| (!into.iter().any(|(o, _)| *o == j)).then(|| pool.array(&k.outputs[j])))
                .collect()
        };
        let mut ptrs: Vec<*mut f32> = contiguous.iter().map(|a| a.as_ptr() as *mut f32).collect();
        ptrs.extend(extra);
        for (j, o) in outs.iter_mut().enumerate() {
            ptrs.push(match o {
                Some(a) => a.as_mut_ptr(),
                None => into.iter().find(|(o, _)| *o == j).expect("listed").1,
            });
        }
        LoopArgs {
            _contiguous: contiguous,
            outs,
            ptrs,
        }
    }

    /// Run a loop kernel; outputs listed in `into` (output, buffer) are written to the
    /// given buffers (an in-place update) and come back as `None`.
    pub(super) fn call_loop_into(
        &self,
        k: &LoopKernel,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        into: &[(usize, *mut f32)],
    ) -> Vec<Option<ArrayD<f32>>> {
        let args = self.loop_args(k, ins, None, into);
        let elems: usize = k.outputs.iter().map(|s| s.iter().product::<usize>()).sum();
        let work = elems * (1 + TRANSCENDENTAL_WEIGHT * k.transcendentals);
        let parts = if k.splittable && work >= PARALLEL_LOOP_MIN {
            self.threads
        } else {
            1
        };
        let (f, seed, step, rows) = (k.f, env.seed, env.step, env.row_offset);
        let table = args.ptrs.as_ptr() as usize;
        // SAFETY (every call): the table holds the kernel's input and output buffers, each
        // of the shape it was compiled for (checked by the shape binding); calls with
        // disjoint fractions write disjoint slices of the outputs.
        let part = move |p: usize| unsafe {
            f(
                table as *const *mut f32,
                seed,
                step,
                p as u64,
                p as u64 + 1,
                parts as u64,
                rows,
            )
        };
        if parts == 1 {
            part(0);
        } else {
            rayon::scope(|s| {
                for p in 1..parts {
                    s.spawn(move |_| part(p));
                }
                // Part 0 on this thread: no thread is left waiting for the others.
                part(0);
            });
        }
        args.outs
    }

    /// A matmul kernel whose epilogue runs on each row panel of the product right after
    /// the GEMM has computed it, on the same thread, while the panel is in cache. The
    /// product lives in a pool buffer for the duration of the call.
    #[allow(clippy::too_many_arguments)]
    fn matmul_panels(
        &self,
        (a, b, ta, tb, path): (&Operand, &Operand, bool, bool, GemmPath),
        k: &LoopKernel,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        into: &[(usize, *mut f32)],
    ) -> Vec<Option<ArrayD<f32>>> {
        let (a, b) = (a.view(ins), b.view(ins));
        let (m, n) = product_shape(&a, &b, ta, tb);
        let mut c = self.pool.borrow_mut().array(&[m, n]);
        let cp = c.as_mut_ptr();
        let args = self.loop_args(k, ins, Some(cp), into);
        // Rows [r0, r1) of every output of shape [m, n] read only rows [r0, r1) of the
        // product, which the GEMM has just written (panel bounds keep n·r a multiple of 4,
        // so the kernel's slice is exactly those rows).
        let epilogue = fraction_fn(k, env, &args.ptrs, m);
        self.gemm(&a, &b, ta, tb, path, Some(cp), Some(&epilogue));
        self.recycle(c);
        args.outs
    }

    /// A window kernel (`conv.rs`): the op into a pool buffer (or the given one when it
    /// is the kernel's only output), then its epilogue, on each image's part right after
    /// it is computed when the plan allows.
    #[allow(clippy::too_many_arguments)]
    fn run_window(
        &self,
        core: &WindowCore,
        operands: &[Operand],
        epilogue: Option<&LoopKernel>,
        panels: bool,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        into: &[(usize, *mut f32)],
    ) -> Vec<Option<ArrayD<f32>>> {
        let views: Vec<ArrayViewD<f32>> = operands.iter().map(|o| o.view(ins)).collect();
        let contiguous: Vec<CowArray<f32, IxDyn>> =
            views.iter().map(|v| v.as_standard_layout()).collect();
        let slices: Vec<&[f32]> = contiguous
            .iter()
            .map(|a| a.as_slice().expect("standard layout"))
            .collect();
        let Some(k) = epilogue else {
            let mut own = None;
            let ptr = match into.iter().find(|(o, _)| *o == 0) {
                Some(&(_, p)) => p,
                None => own
                    .insert(self.pool.borrow_mut().array(&core.out))
                    .as_mut_ptr(),
            };
            // SAFETY: `ptr` holds the op's result (a pool buffer of its shape, or an
            // arena slot or donated buffer of the output's shape), clear of the operands.
            unsafe { core.run(&slices, ptr, self.threads, None) };
            return vec![own];
        };
        let mut c = self.pool.borrow_mut().array(&core.out);
        let cp = c.as_mut_ptr();
        let outs = if panels && writes_clear_of_operands(k, &views, into) {
            let args = self.loop_args(k, ins, Some(cp), into);
            // Images [b0, b1) of every output read only images [b0, b1) of the op's
            // result, which the op has just written (the plan checked that an image's part
            // is a whole number of vectors).
            let epi = fraction_fn(k, env, &args.ptrs, core.images());
            // SAFETY: `cp` is a pool buffer of the op's shape.
            unsafe { core.run(&slices, cp, self.threads, Some(&epi)) };
            args.outs
        } else {
            // SAFETY: as above.
            unsafe { core.run(&slices, cp, self.threads, None) };
            let mut all: Vec<ArrayViewD<f32>> = ins.to_vec();
            all.push(c.view());
            self.call_loop_into(k, &all, env, into)
        };
        self.recycle(c);
        outs
    }

    pub(super) fn run_staged(
        &self,
        body_id: u32,
        stages: &[Stage],
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        syms: &HashMap<String, usize>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let body = &self.graph.bodies[body_id as usize];
        // Kernel inputs are views; values computed here are owned (and later pooled).
        let mut views: HashMap<NodeId, ArrayViewD<f32>> = HashMap::new();
        let mut owned: HashMap<NodeId, ArrayD<f32>> = HashMap::new();
        for n in body.g.node_indices() {
            if let Op::Input { name, .. } = &body.node(n).op {
                let k: usize = name
                    .strip_prefix("in")
                    .and_then(|s| s.parse().ok())
                    .ok_or("kernel input name")?;
                views.insert(n, ins[k].view());
            }
        }
        for st in stages {
            match st {
                Stage::Reduce(n) => {
                    let x = body.inputs(*n)[0];
                    let out_shape = super::loops::concrete(&body.ty(*n).shape, syms)?;
                    let v = match (owned.get(&x), views.get(&x)) {
                        (Some(a), _) => {
                            super::reduce::run(&body.node(*n).op, &a.view(), &out_shape)?
                        }
                        (None, Some(v)) => super::reduce::run(&body.node(*n).op, v, &out_shape)?,
                        (None, None) => {
                            let a = interp::eval_node(body, x, &[], syms, env)?;
                            super::reduce::run(&body.node(*n).op, &a.view(), &out_shape)?
                        }
                    };
                    owned.insert(*n, v);
                }
                Stage::Op(n) => {
                    // Operands not computed here (constants) are evaluated on the spot;
                    // views are copied only when an op needs them (the reference semantics
                    // take owned arrays).
                    let mut tmp: Vec<ArrayD<f32>> = Vec::new();
                    let ids = body.inputs(*n);
                    for &i in &ids {
                        if !owned.contains_key(&i) {
                            tmp.push(match views.get(&i) {
                                Some(v) => v.to_owned(),
                                None => interp::eval_node(body, i, &[], syms, env)?,
                            });
                        }
                    }
                    let mut t = tmp.iter();
                    let refs: Vec<&ArrayD<f32>> = ids
                        .iter()
                        .map(|i| {
                            owned
                                .get(i)
                                .unwrap_or_else(|| t.next().expect("one per operand"))
                        })
                        .collect();
                    let v = interp::eval_node(body, *n, &refs, syms, env)?;
                    owned.insert(*n, v);
                }
                Stage::Loop {
                    kernel,
                    inputs,
                    outputs,
                } => {
                    let args: Vec<ArrayViewD<f32>> = inputs
                        .iter()
                        .map(|i| {
                            owned
                                .get(i)
                                .map(|a| a.view())
                                .unwrap_or_else(|| views[i].view())
                        })
                        .collect();
                    let outs = self.call_loop(kernel, &args, env);
                    for (o, v) in outputs.iter().zip(outs) {
                        owned.insert(*o, v);
                    }
                }
            }
        }
        let mut result: Vec<ArrayD<f32>> = Vec::with_capacity(body.outputs.len());
        for (k, (_, n)) in body.outputs.iter().enumerate() {
            result.push(match owned.remove(n) {
                Some(a) => a,
                None if body.outputs[..k].iter().any(|(_, m)| m == n) => {
                    let j = body.outputs[..k]
                        .iter()
                        .position(|(_, m)| m == n)
                        .expect("found above");
                    result[j].clone()
                }
                None => match views.get(n) {
                    Some(v) => v.to_owned(),
                    None => interp::eval_node(body, *n, &[], syms, env)?,
                },
            });
        }
        let mut pool = self.pool.borrow_mut();
        for (_, a) in owned {
            pool.give(a);
        }
        Ok(result)
    }

    /// Tensor buffers allocated so far (outside the arena): once every kernel has run and
    /// the caller recycles what it is done with, a training step allocates none.
    pub fn buffers_allocated(&self) -> usize {
        self.pool.borrow().allocated
    }

    /// Give a tensor the caller no longer needs (an old parameter) back for reuse.
    pub fn recycle(&self, a: ArrayD<f32>) {
        self.pool.borrow_mut().give(a);
    }

    #[allow(clippy::too_many_arguments)]
    /// B packed for `packed.rs` when it is an operand that no step of the running scan
    /// changes (packed on its first product of the run), else None.
    fn packed_operand(
        &self,
        b: &ndarray::CowArray<f32, IxDyn>,
        tb: bool,
        k: usize,
        n: usize,
        b_rs: isize,
        b_cs: isize,
    ) -> Option<std::sync::Arc<super::packed::PackedB>> {
        let mut inv = self.invariant.borrow_mut();
        let key = (b.as_ptr() as usize, b.len());
        if !inv.operands.contains(&key) || !super::packed::available() {
            return None;
        }
        if let Some((_, p)) = inv.packed.iter().find(|(q, _)| *q == (key.0, tb)) {
            return Some(p.clone());
        }
        // SAFETY: B is k·n floats read through its strides, unchanged during the scan.
        let p = std::sync::Arc::new(unsafe {
            super::packed::PackedB::pack(k, n, b.as_ptr(), b_rs, b_cs)
        });
        inv.packed.push(((key.0, tb), p.clone()));
        Some(p)
    }

    pub(super) fn gemm(
        &self,
        a: &ArrayViewD<f32>,
        b: &ArrayViewD<f32>,
        ta: bool,
        tb: bool,
        path: GemmPath,
        out: Option<*mut f32>,
        epilogue: Option<&(dyn Fn(usize, usize) + Sync)>,
    ) -> Option<ArrayD<f32>> {
        let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
        // Operands of rank > 2 are matrices of rows (`plan::split_matmul`).
        let (ar, ac) = super::plan::rows_cols(a.shape());
        let (br, bc) = super::plan::rows_cols(b.shape());
        let lead = (a.ndim() > 2 && !ta).then(|| a.shape()[..a.ndim() - 1].to_vec());
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let n = if tb { br } else { bc };
        // Row-major storage; a transposed operand swaps its strides.
        let (a_rs, a_cs) = if ta {
            (1, ac as isize)
        } else {
            (ac as isize, 1)
        };
        let (b_rs, b_cs) = if tb {
            (1, bc as isize)
        } else {
            (bc as isize, 1)
        };
        let mut c = match out {
            Some(_) => None,
            None => Some(self.pool.borrow_mut().array(&[m, n])),
        };
        let cp = match (&mut c, out) {
            (Some(c), _) => c.as_mut_ptr(),
            (None, Some(p)) => p,
            (None, None) => unreachable!("one of the two"),
        };
        if k == 0 {
            // SAFETY: `cp` holds m·n floats.
            unsafe { std::ptr::write_bytes(cp, 0, m * n) };
            if let Some(e) = epilogue
                && m > 0
            {
                e(0, m);
            }
            return match (c, lead) {
                (Some(c), Some(mut shape)) => {
                    shape.push(n);
                    Some(
                        c.into_shape_with_order(IxDyn(&shape))
                            .expect("m·n elements"),
                    )
                }
                (c, _) => c,
            };
        }
        let (cp, ap, bp) = (cp as usize, a.as_ptr() as usize, b.as_ptr() as usize);
        let packed = self.packed_operand(&b, tb, k, n, b_rs, b_cs);
        // Rows [r0, r1) of C from rows [r0, r1) of A: independent of every other row, so a
        // split across threads gives the same bits as one call.
        let product = |r0: usize, r1: usize| {
            if let Some(pb) = &packed {
                // SAFETY: as below; `pb` is B packed, and `available()` held to pack it.
                unsafe {
                    super::packed::matmul(
                        r1 - r0,
                        (ap as *const f32).wrapping_offset(r0 as isize * a_rs),
                        a_rs,
                        a_cs,
                        pb,
                        (cp as *mut f32).wrapping_add(r0 * n),
                        n as isize,
                    )
                };
                return;
            }
            // SAFETY: pointers and strides describe the buffers above; each call writes
            // its own rows of C, which overlaps neither operand, and nothing writes the
            // operands meanwhile.
            unsafe {
                sgemm::matmul_rows(
                    path,
                    r0,
                    r1,
                    n,
                    k,
                    ap as *const f32,
                    a_rs,
                    a_cs,
                    bp as *const f32,
                    b_rs,
                    b_cs,
                    cp as *mut f32,
                    n as isize,
                );
            }
        };
        // With an epilogue, rows are computed in panels of EPILOGUE_PANEL_BYTES of C (the
        // last one of a row block up to twice that), each followed by its epilogue; panel
        // bounds are multiples of 4 rows.
        let panel = (EPILOGUE_PANEL_BYTES / (4 * n.max(1))).max(4) & !3;
        let rows = |r0: usize, r1: usize| match epilogue {
            None => product(r0, r1),
            Some(e) => {
                let mut p0 = r0;
                while p0 < r1 {
                    let p1 = if r1 - p0 < 2 * panel { r1 } else { p0 + panel };
                    product(p0, p1);
                    e(p0, p1);
                    p0 = p1;
                }
            }
        };
        let parts = if m * n * k >= PARALLEL_GEMM_MIN {
            self.threads.min(m / 16).max(1)
        } else {
            1
        };
        if parts == 1 {
            rows(0, m);
        } else {
            // Fixed partition per thread count (DESIGN §3): row blocks of equal size,
            // starting at multiples of 4 rows (an epilogue's slices are then exact).
            let bounds: Vec<usize> = (0..=parts)
                .map(|p| if p == parts { m } else { (p * m / parts) & !3 })
                .collect();
            rayon::scope(|s| {
                for w in bounds.windows(2).skip(1) {
                    let (r0, r1) = (w[0], w[1]);
                    let rows = &rows;
                    s.spawn(move |_| rows(r0, r1));
                }
                rows(bounds[0], bounds[1]);
            });
        }
        match (c, lead) {
            (Some(c), Some(mut shape)) => {
                shape.push(n);
                Some(
                    c.into_shape_with_order(IxDyn(&shape))
                        .expect("m·n elements"),
                )
            }
            (c, _) => c,
        }
    }

    /// Run kernel `body_id` by its plan.
    pub(super) fn run_kernel(
        &self,
        plan: &Plan,
        body_id: u32,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        syms: &HashMap<String, usize>,
        into: &[(usize, *mut f32)],
    ) -> Result<Vec<Option<ArrayD<f32>>>, String> {
        if !into.is_empty()
            && !matches!(
                plan,
                Plan::Loop(_) | Plan::MatMul { .. } | Plan::Window { .. } | Plan::Copy { .. }
            )
        {
            return Err(format!("kernel {body_id} cannot write into given buffers"));
        }
        Ok(match plan {
            Plan::Loop(k) => self.call_loop_into(k, ins, env, into),
            Plan::MatMul {
                a,
                b,
                ta,
                tb,
                epilogue,
                panels,
                path,
            } => match epilogue {
                None => {
                    let out = into.iter().find(|(o, _)| *o == 0).map(|x| x.1);
                    vec![self.gemm(&a.view(ins), &b.view(ins), *ta, *tb, *path, out, None)]
                }
                Some(k)
                    if *panels
                        && writes_clear_of_operands(k, &[a.view(ins), b.view(ins)], into) =>
                {
                    self.matmul_panels((a, b, *ta, *tb, *path), k, ins, env, into)
                }
                Some(k) => {
                    let c = self
                        .gemm(&a.view(ins), &b.view(ins), *ta, *tb, *path, None, None)
                        .expect("a pool buffer");
                    let mut all: Vec<ArrayViewD<f32>> = ins.to_vec();
                    all.push(c.view());
                    let outs = self.call_loop_into(k, &all, env, into);
                    self.recycle(c);
                    outs
                }
            },
            Plan::Window {
                core,
                operands,
                epilogue,
                panels,
            } => self.run_window(core, operands, epilogue.as_ref(), *panels, ins, env, into),
            Plan::Copy { op, operands, out } => {
                let views: Vec<ArrayViewD<f32>> = operands.iter().map(|o| o.view(ins)).collect();
                let mut own = None;
                let ptr = match into.iter().find(|(o, _)| *o == 0) {
                    Some(&(_, p)) => p,
                    None => own.insert(self.pool.borrow_mut().array(out)).as_mut_ptr(),
                };
                // SAFETY: `ptr` holds the output (a pool buffer of its shape, or an arena
                // slot of the output's shape, which no operand overlaps).
                let mut dst = unsafe { ArrayViewMutD::from_shape_ptr(IxDyn(out), ptr) };
                super::copy::run(op, &views, &mut dst)?;
                vec![own]
            }
            Plan::Staged(stages) => self
                .run_staged(body_id, stages, ins, env, syms)?
                .into_iter()
                .map(Some)
                .collect(),
            Plan::Interpret => {
                let owned: Vec<ArrayD<f32>> = ins.iter().map(|v| v.to_owned()).collect();
                let refs: Vec<&ArrayD<f32>> = owned.iter().collect();
                interp::run_kernel(&self.graph.bodies[body_id as usize], &refs, env, syms)?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
        })
    }

    /// The nodes of the named outputs.
    pub(super) fn roots(&self, outputs: &[&str]) -> Result<Vec<NodeId>, String> {
        outputs
            .iter()
            .map(|o| {
                self.graph
                    .output(o)
                    .ok_or_else(|| format!("the graph has no output `{o}`"))
            })
            .collect()
    }

    pub(super) fn prepare(
        &mut self,
        roots: &[NodeId],
        donate: &[(usize, String)],
    ) -> std::rc::Rc<Prepared> {
        if let Some((_, p)) = self
            .prepared
            .iter()
            .find(|((r, d), _)| r[..] == *roots && d[..] == *donate)
        {
            return p.clone();
        }
        let order = self.graph.schedule_from(roots);
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let actions: Vec<Action> = order
            .iter()
            .map(|&n| match &self.graph.node(n).op {
                Op::Input { name, .. } | Op::Param { name, .. } | Op::State { name, .. } => {
                    Action::Leaf(name.clone())
                }
                Op::Fused { body, output, .. } => Action::Kernel {
                    body: *body,
                    output: *output,
                },
                Op::Reshape { shape } => Action::Reshape(shape.clone()),
                Op::Scan {
                    body,
                    output,
                    carries,
                    xs,
                    reverse,
                    ..
                } => Action::Scan {
                    body: *body,
                    output: *output,
                    carries: *carries as usize,
                    xs: *xs as usize,
                    reverse: *reverse,
                },
                _ => Action::Other,
            })
            .collect();
        let inputs: Vec<Vec<usize>> = order
            .iter()
            .map(|&n| self.graph.inputs(n).iter().map(|i| pos[i]).collect())
            .collect();
        let inplace = inplace_candidates(&actions, &inputs, roots, &pos, donate);
        let p = std::rc::Rc::new(Prepared {
            id: self.prepared.len(),
            roots: roots.iter().map(|r| pos[r]).collect(),
            order,
            actions,
            inputs,
            inplace,
        });
        self.prepared
            .push(((roots.to_vec(), donate.to_vec()), p.clone()));
        p
    }

    /// Run the graph and return the named outputs. Leaves are read in place; kernel
    /// outputs are moved, not copied, into the values of their nodes.
    pub fn run(&mut self, env: &Env<f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>, String> {
        let (out, _) = self.run_inner(env, outputs, &[], &HashMap::new(), (&[], None))?;
        Ok(out)
    }

    /// [`run`](Self::run), handing each of the `observed` outputs to `obs` as soon as the
    /// kernel computing it has run (instead of returning it), and ticking `obs` after
    /// every kernel. The schedule computes the outputs depth first in the order asked
    /// (`Graph::schedule_from`), so ask first for what should be ready first.
    pub fn run_observed(
        &mut self,
        env: &Env<f32>,
        outputs: &[&str],
        observed: &[&str],
        obs: &mut dyn Observer<f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let (out, _) = self.run_inner(env, outputs, &[], &HashMap::new(), (observed, Some(obs)))?;
        Ok(out)
    }

    /// [`run`](Self::run), where each (output, leaf) of `donate` gives the leaf's buffer
    /// to the output: when the output is computed by a loop kernel that is the leaf's
    /// last reader and reads it only at the index it writes (the optimizer update of a
    /// parameter), the kernel writes over the leaf, and the leaf's array leaves `env` to
    /// become that output. Other donated leaves stay in `env`.
    pub fn run_donating(
        &mut self,
        env: &mut Env<f32>,
        outputs: &[&str],
        donate: &[(&str, &str)],
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let pairs: Vec<(usize, String)> = donate
            .iter()
            .filter_map(|(o, l)| {
                let r = outputs.iter().position(|x| x == o)?;
                Some((r, l.to_string()))
            })
            .collect();
        let mut bufs: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        for (_, leaf) in &pairs {
            if let Some(a) = env.values.get_mut(leaf)
                && a.is_standard_layout()
            {
                bufs.insert(leaf.clone(), (a.as_mut_ptr() as usize, a.shape().to_vec()));
            }
        }
        let (mut out, written) = self.run_inner(env, outputs, &pairs, &bufs, (&[], None))?;
        for (root, leaf) in written {
            out[root] = env.values.remove(&leaf).ok_or("donated leaf vanished")?;
        }
        Ok(out)
    }

    /// Returns the outputs and the (output, leaf) pairs written in place (whose outputs
    /// here are placeholders).
    fn run_inner(
        &mut self,
        env: &Env<f32>,
        outputs: &[&str],
        donate: &[(usize, String)],
        bufs: &HashMap<String, (usize, Vec<usize>)>,
        (observed, mut obs): (&[&str], Option<&mut dyn Observer<f32>>),
    ) -> Result<(Vec<ArrayD<f32>>, Donations), String> {
        let all: Vec<&str> = outputs.iter().chain(observed).copied().collect();
        let roots = self.roots(&all)?;
        let prep = self.prepare(&roots, donate);
        // (schedule position, observed output) in schedule order.
        let mut watch: Vec<(usize, usize)> = prep.roots[outputs.len()..]
            .iter()
            .enumerate()
            .map(|(k, &r)| (r, k))
            .collect();
        watch.sort_unstable();
        let mut watch = watch.into_iter().peekable();
        let mut written: Vec<(usize, String)> = Vec::new();
        // (body, output) pairs written in place: their nodes hold placeholders.
        let mut in_place: Vec<(u32, u32)> = Vec::new();
        let syms = interp::bind_symbols(&self.graph, env, &prep.order)?;
        let key = sym_key(&syms);
        // Plans every kernel of the schedule on first use.
        let l = self.layout(&prep, &syms, &key)?;
        let (arena_base, slots) = {
            let l = &mut self.layouts[l].2;
            // SAFETY: `base` is inside the arena, which is not resized while it is used.
            let base = unsafe { l.arena.as_mut_ptr().add(l.base) as usize };
            (base, l.slots.clone())
        };
        for a in &prep.actions {
            if let Action::Scan { body, .. } = a {
                self.scan_graph(*body)?;
            }
        }
        // (A schedule without kernels, as in an unoptimized graph, has no plans.)
        let no_plans = HashMap::new();
        let plans = self.plans.get(&key).unwrap_or(&no_plans);
        let mut timings: Vec<(u32, f64)> = Vec::new();
        let mut vals: Vec<Option<CowArray<f32, IxDyn>>> =
            (0..prep.order.len()).map(|_| None).collect();
        // Outputs of each kernel body run so far, by body.
        let mut kernels: Vec<Option<Vec<Option<ArrayD<f32>>>>> =
            (0..self.graph.bodies.len()).map(|_| None).collect();
        // Outputs of each scan run so far, by body and operands.
        let mut scans: Vec<((u32, Vec<usize>), Vec<Option<ArrayD<f32>>>)> = Vec::new();
        for (i, action) in prep.actions.iter().enumerate() {
            let v: CowArray<f32, IxDyn> = match action {
                Action::Leaf(name) => CowArray::from(
                    env.values
                        .get(name)
                        .ok_or_else(|| format!("no value given for `{name}`"))?
                        .view(),
                ),
                Action::Kernel { body, output } => {
                    if kernels[*body as usize].is_none() {
                        let refs: Vec<ArrayViewD<f32>> = prep.inputs[i]
                            .iter()
                            .map(|&j| vals[j].as_ref().expect("operand computed").view())
                            .collect();
                        let plan = plans
                            .get(body)
                            .ok_or_else(|| format!("kernel {body} has no plan"))?;
                        let t0 = self.profile.is_some().then(std::time::Instant::now);
                        let inplace = match prep.inplace.get(&i) {
                            Some(cands) => Self::inplace_buffers(plan, cands, bufs),
                            None => Vec::new(),
                        };
                        // Outputs written over donated leaves, then outputs in the arena.
                        let mut into: Vec<(usize, *mut f32)> = inplace
                            .iter()
                            .map(|c| (c.output, bufs[&c.leaf].0 as *mut f32))
                            .collect();
                        for c in &inplace {
                            written.push((c.root, c.leaf.clone()));
                            in_place.push((*body, c.output as u32));
                        }
                        for &(o, off) in slots.get(body).map_or(&[][..], |v| v) {
                            // SAFETY: the slot lies inside the arena (memory plan).
                            into.push((o as usize, unsafe { (arena_base as *mut f32).add(off) }));
                        }
                        let out = self.run_kernel(plan, *body, &refs, env, &syms, &into)?;
                        if let Some(t0) = t0 {
                            timings.push((*body, t0.elapsed().as_secs_f64()));
                        }
                        kernels[*body as usize] = Some(out);
                    }
                    let slot = slots
                        .get(body)
                        .and_then(|v| v.iter().find(|(o, _)| o == output));
                    if in_place.contains(&(*body, *output)) {
                        // Written over its leaf; the caller takes it from there.
                        CowArray::from(ArrayD::zeros(IxDyn(&[0])))
                    } else if let Some(&(_, off)) = slot {
                        let dims =
                            interp::concrete_shape(&self.graph.ty(prep.order[i]).shape, &syms)?;
                        // SAFETY: the kernel wrote this slot of the arena; no other value
                        // uses it while this one lives (memory plan), and the arena is not
                        // touched otherwise until the run ends.
                        let view = unsafe {
                            ArrayViewD::from_shape_ptr(
                                IxDyn(&dims),
                                (arena_base as *const f32).add(off),
                            )
                        };
                        CowArray::from(view)
                    } else {
                        let slot = kernels[*body as usize]
                            .as_mut()
                            .and_then(|k| k.get_mut(*output as usize))
                            .ok_or_else(|| format!("kernel {body} has no output {output}"))?;
                        CowArray::from(
                            slot.take().ok_or_else(|| {
                                format!("kernel {body} output {output} used twice")
                            })?,
                        )
                    }
                }
                Action::Scan {
                    body,
                    output,
                    carries,
                    xs,
                    reverse,
                } => {
                    let key = (*body, prep.inputs[i].clone());
                    let at = match scans.iter().position(|(k, _)| *k == key) {
                        Some(at) => at,
                        None => {
                            let refs: Vec<ArrayViewD<f32>> = prep.inputs[i]
                                .iter()
                                .map(|&j| vals[j].as_ref().expect("operand computed").view())
                                .collect();
                            let sub = self.scans.get_mut(body).expect("compiled before the run");
                            let outs = run_scan(sub, *carries, *xs, *reverse, &refs, env)?;
                            scans.push((key, outs.into_iter().map(Some).collect()));
                            scans.len() - 1
                        }
                    };
                    let slot = scans[at]
                        .1
                        .get_mut(*output as usize)
                        .ok_or_else(|| format!("scan {body} has no output {output}"))?;
                    CowArray::from(
                        slot.take()
                            .ok_or_else(|| format!("scan {body} output {output} used twice"))?,
                    )
                }
                Action::Reshape(shape) => {
                    // A view of its operand when that is contiguous: no copy.
                    let src = vals[prep.inputs[i][0]].clone().expect("operand computed");
                    let dims = interp::concrete_shape(shape, &syms)?;
                    if src.is_standard_layout() {
                        src.into_shape_with_order(IxDyn(&dims))
                            .map_err(|e| e.to_string())?
                    } else {
                        CowArray::from(
                            src.to_owned()
                                .into_shape_with_order(IxDyn(&dims))
                                .map_err(|e| e.to_string())?,
                        )
                    }
                }
                Action::Other => {
                    let owned: Vec<ArrayD<f32>> = prep.inputs[i]
                        .iter()
                        .map(|&j| vals[j].as_ref().expect("operand computed").to_owned())
                        .collect();
                    let ins: Vec<&ArrayD<f32>> = owned.iter().collect();
                    CowArray::from(interp::eval_node(
                        &self.graph,
                        prep.order[i],
                        &ins,
                        &syms,
                        env,
                    )?)
                }
            };
            vals[i] = Some(v);
            if let Some(obs) = obs.as_deref_mut() {
                // Observed outputs computed by this node are final: hand them over.
                while let Some(&(at, k)) = watch.peek()
                    && at == i
                {
                    obs.ready(k, vals[i].as_ref().expect("just computed").view());
                    watch.next();
                }
                if !matches!(action, Action::Leaf(_) | Action::Reshape(_)) {
                    obs.tick();
                }
            }
        }
        let mut out: Vec<ArrayD<f32>> = Vec::with_capacity(outputs.len());
        for (k, &r) in prep.roots[..outputs.len()].iter().enumerate() {
            match vals[r].take() {
                Some(v) => out.push(v.into_owned()),
                None => {
                    let j = prep.roots[..k]
                        .iter()
                        .position(|&q| q == r)
                        .expect("an earlier output took it");
                    out.push(out[j].clone());
                }
            }
        }
        if let Some(p) = &mut self.profile {
            for (body, secs) in timings {
                let e = p.entry(body).or_default();
                e.0 += secs;
                e.1 += 1;
            }
        }
        // Intermediate values go back to the pool for the next run.
        let mut pool = self.pool.borrow_mut();
        for v in vals.into_iter().flatten() {
            if v.is_owned() {
                pool.give(v.into_owned());
            }
        }
        Ok((out, written))
    }
}

/// Run a scan natively: its body's compiled graph once per step, the carries moved from
/// one step's outputs to the next step's inputs, each step's outputs written into their
/// slice of the stacked results. Returns the final carries, then the stacked outputs.
fn run_scan(
    sub: &mut JitGraph,
    carries: usize,
    xs: usize,
    reverse: bool,
    ins: &[ArrayViewD<f32>],
    env: &Env<f32>,
) -> Result<Vec<ArrayD<f32>>, String> {
    use ndarray::Axis;
    let (c, n) = (carries, xs);
    let steps = ins[c].shape()[0];
    if steps == 0 {
        return Err("scan over a sequence of length 0".into());
    }
    let ny = sub.graph.outputs.len().saturating_sub(c);
    let outputs: Vec<String> = (0..c)
        .map(|i| format!("carry{i}"))
        .chain((0..ny).map(|l| format!("y{l}")))
        .collect();
    let outputs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
    let carry_names: Vec<String> = (0..c).map(|i| format!("carry{i}")).collect();
    let x_names: Vec<String> = (0..n).map(|j| format!("x{j}")).collect();
    let mut e = Env::new(env.seed, env.step);
    e.sizes = env.sizes.clone();
    e.row_offset = env.row_offset;
    for (k, v) in ins[c + n..].iter().enumerate() {
        e.values.insert(format!("cap{k}"), v.to_owned());
    }
    for (i, name) in carry_names.iter().enumerate() {
        e.values.insert(name.clone(), ins[i].to_owned());
    }
    for (j, name) in x_names.iter().enumerate() {
        e.values
            .insert(name.clone(), ins[c + j].index_axis(Axis(0), 0).to_owned());
    }
    // The captured operands are the same at every step: products pack them once.
    *sub.invariant.borrow_mut() = Invariant {
        operands: (0..ins.len() - c - n)
            .map(|k| {
                let v = &e.values[&format!("cap{k}")];
                (v.as_ptr() as usize, v.len())
            })
            .collect(),
        packed: Vec::new(),
    };
    let mut ys: Vec<Option<ArrayD<f32>>> = (0..ny).map(|_| None).collect();
    for s in 0..steps {
        let t = if reverse { steps - 1 - s } else { s };
        e.step = crate::rng::fold(env.step, t as u64);
        for (j, name) in x_names.iter().enumerate() {
            let slot = e.values.get_mut(name).expect("inserted above");
            slot.assign(&ins[c + j].index_axis(Axis(0), t));
        }
        let mut out = sub.run(&e, &outputs)?.into_iter();
        for name in &carry_names {
            let v = out.next().ok_or("scan body gave too few outputs")?;
            let old = std::mem::replace(e.values.get_mut(name).expect("inserted above"), v);
            sub.recycle(old);
        }
        for y in ys.iter_mut() {
            let v = out.next().ok_or("scan body gave too few outputs")?;
            let stack = y.get_or_insert_with(|| {
                let mut shape = vec![steps];
                shape.extend_from_slice(v.shape());
                ArrayD::zeros(IxDyn(&shape))
            });
            stack.index_axis_mut(Axis(0), t).assign(&v);
            sub.recycle(v);
        }
    }
    *sub.invariant.borrow_mut() = Invariant::default();
    let mut result = Vec::with_capacity(c + ny);
    for name in &carry_names {
        result.push(e.values.remove(name).expect("inserted above"));
    }
    result.extend(ys.into_iter().map(|y| y.expect("at least one step")));
    Ok(result)
}
