//! Running an optimized graph natively. Per kernel body and batch size, a plan is made
//! once and cached:
//!
//! - loop kernels (elementwise bodies, the optimizer update) run as one Cranelift
//!   function;
//! - matmul kernels run the `gemm` crate (transposed operands read through strides, no
//!   copies), then their elementwise epilogue as a Cranelift loop kernel;
//! - reduce and softmax-xent kernels whose reductions run along or across the rows of
//!   `[B, C]` values run as one Cranelift row kernel (`rows.rs`); other bodies with
//!   reductions are staged: their elementwise levels run as native loops, their
//!   reductions by the reference semantics (ndarray) in between;
//! - anything else (data movement, batched matmuls) runs through the reference
//!   interpreter until its code generator exists. [`JitGraph::native_kernels`] counts the
//!   fully native kernels; `dlc compile --emit plan` shows the plan of each.

use super::Jit;
use super::loops::{self, LoopKernel};
use super::memory::{self, Life, MemPlan};
use super::rows;
use super::sgemm::{self, GemmPath};
use crate::interp::{self, Env};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};
use std::collections::HashMap;

/// Buffers of finished values, by length, reused for kernel outputs: a training step
/// then allocates (and page-faults) nothing once it has run once.
#[derive(Default)]
pub struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
}

impl Pool {
    /// Buffers kept per length.
    const KEEP: usize = 16;

    /// A buffer of `n` elements whose contents are stale: the caller overwrites all.
    fn take(&mut self, n: usize) -> Vec<f32> {
        self.free
            .get_mut(&n)
            .and_then(|v| v.pop())
            .unwrap_or_else(|| vec![0.0; n])
    }

    fn array(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), self.take(n)).expect("length matches the shape")
    }

    pub fn give(&mut self, a: ArrayD<f32>) {
        if !a.is_standard_layout() {
            return;
        }
        let (v, off) = a.into_raw_vec_and_offset();
        if off.unwrap_or(0) == 0 {
            let slot = self.free.entry(v.len()).or_default();
            if slot.len() < Self::KEEP {
                slot.push(v);
            }
        }
    }
}

/// Output elements from which a loop kernel is split across threads.
pub const PARALLEL_LOOP_MIN: usize = 1 << 17;

/// Multiply-adds from which a gemm is split across threads.
pub const PARALLEL_GEMM_MIN: usize = 1 << 22;

/// A step of a staged kernel (reductions with elementwise work around them).
enum Stage {
    /// Elementwise nodes of one level, as one native loop.
    Loop {
        kernel: LoopKernel,
        inputs: Vec<NodeId>,
        outputs: Vec<NodeId>,
    },
    /// One reduction (or other op) of the body, evaluated by the reference semantics.
    Op(NodeId),
}

enum Plan {
    Loop(LoopKernel),
    /// Reductions and the elementwise levels between them.
    Staged(Vec<Stage>),
    MatMul {
        a: usize,
        b: usize,
        ta: bool,
        tb: bool,
        epilogue: Option<LoopKernel>,
        /// The GEMM core for this product's shape (from the committed cost table).
        path: GemmPath,
    },
    Interpret,
}

/// Where the native kernels of one schedule at one set of sizes write their
/// intermediate values: fixed offsets in one arena (`memory.rs`).
struct Layout {
    /// Float offset in the arena of each (kernel body, output) placed there.
    slots: HashMap<(u32, u32), usize>,
    arena: Vec<f32>,
    /// Float offset of the arena's first cache-aligned byte.
    base: usize,
    plan: MemPlan,
}

pub struct JitGraph {
    graph: Graph,
    jit: Jit,
    /// Plans by symbolic sizes, then by kernel body.
    plans: HashMap<Vec<(String, usize)>, HashMap<u32, Plan>>,
    /// Schedules by requested outputs and donated leaves.
    prepared: HashMap<(Vec<NodeId>, Vec<(usize, String)>), std::rc::Rc<Prepared>>,
    threads: usize,
    pool: std::cell::RefCell<Pool>,
    /// Memory layouts by schedule and sizes.
    layouts: HashMap<(usize, Vec<(String, usize)>), Layout>,
    /// Seconds spent per kernel body, when `DLC_PROFILE` is set (printed on drop).
    profile: Option<HashMap<u32, (f64, usize)>>,
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

/// The matmul of a matmul kernel whose operands are kernel inputs, and the body with the
/// matmul replaced by one more input (`in{K}`): the epilogue.
fn split_matmul(body: &Graph) -> Option<(usize, usize, bool, bool, Graph)> {
    let order = body.schedule();
    let mms: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| matches!(body.node(n).op, Op::MatMul { .. }))
        .collect();
    let [m] = mms[..] else { return None };
    let Op::MatMul { ta, tb } = body.node(m).op else {
        return None;
    };
    let input_index = |n: NodeId| match &body.node(n).op {
        Op::Input { name, .. } => name
            .strip_prefix("in")
            .and_then(|s| s.parse::<usize>().ok()),
        _ => None,
    };
    let ops = body.inputs(m);
    let (a, b) = (input_index(ops[0])?, input_index(ops[1])?);
    if body.ty(ops[0]).rank() != 2 || body.ty(ops[1]).rank() != 2 {
        return None;
    }
    let k = order
        .iter()
        .filter(|&&n| matches!(body.node(n).op, Op::Input { .. }))
        .count();
    let mut epi = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for &n in &order {
        let node = body.node(n);
        let id = if n == m {
            epi.add_ok(
                Op::Input {
                    name: format!("in{k}"),
                    ty: (node.ty.dtype, node.ty.shape.clone()),
                },
                &[],
            )
        } else {
            let ins: Vec<NodeId> = body.inputs(n).iter().map(|i| map[i]).collect();
            epi.add_ok(node.op.clone(), &ins)
        };
        map.insert(n, id);
    }
    for (name, n) in &body.outputs {
        epi.set_output(name.clone(), map[n]);
    }
    Some((a, b, ta, tb, epi))
}

/// The concrete shape of kernel input `in{k}` of a body.
fn input_shape(
    body: &Graph,
    k: usize,
    syms: &HashMap<String, usize>,
) -> Result<Vec<usize>, String> {
    let name = format!("in{k}");
    let n = body
        .g
        .node_indices()
        .find(|&n| matches!(&body.node(n).op, Op::Input { name: x, .. } if *x == name))
        .ok_or_else(|| format!("kernel has no input {name}"))?;
    loops::concrete(&body.ty(n).shape, syms)
}

/// Symbolic sizes in a canonical order, as a plan key.
fn sym_key(syms: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut k: Vec<(String, usize)> = syms.iter().map(|(a, b)| (a.clone(), *b)).collect();
    k.sort();
    k
}

/// What running one node of the schedule means, worked out once per set of outputs.
enum Action {
    Leaf(String),
    Kernel { body: u32, output: u32 },
    Reshape(crate::types::Shape),
    Other,
}

/// A schedule with operand positions, so a run does no graph walks.
struct Prepared {
    /// Distinct per schedule (keys its memory layouts).
    id: usize,
    order: Vec<NodeId>,
    actions: Vec<Action>,
    /// Operands of each scheduled node, as positions in `order`.
    inputs: Vec<Vec<usize>>,
    /// Positions of the requested outputs.
    roots: Vec<usize>,
    /// Outputs a kernel may write over a donated leaf, by the schedule position of the
    /// kernel's first node.
    inplace: HashMap<usize, Vec<InPlace>>,
}

/// A kernel output written into the buffer of a donated leaf (an in-place update).
struct InPlace {
    /// Kernel output and kernel operand (the leaf).
    output: usize,
    operand: usize,
    leaf: String,
    /// Index of the output in the requested outputs.
    root: usize,
}

fn is_reduction(op: &Op) -> bool {
    matches!(
        op,
        Op::Sum { .. }
            | Op::Mean { .. }
            | Op::Max { .. }
            | Op::ArgMax { .. }
            | Op::SumTo { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
    )
}

/// Split a kernel body into levels: every reduction starts a new level, and the
/// elementwise nodes of one level run as one native loop. None if some op has neither.
fn stage(
    jit: &mut Jit,
    body: &Graph,
    syms: &HashMap<String, usize>,
) -> Result<Option<Vec<Stage>>, String> {
    let order = body.schedule();
    let mut level: HashMap<NodeId, usize> = HashMap::new();
    for &n in &order {
        let op = &body.node(n).op;
        let l = body.inputs(n).iter().map(|i| level[i]).max().unwrap_or(0);
        level.insert(n, if is_reduction(op) { l + 1 } else { l });
    }
    let is_leafish =
        |op: &Op| matches!(op, Op::Input { .. } | Op::Const { .. } | Op::Random { .. });
    let users = |n: NodeId| -> Vec<NodeId> {
        order
            .iter()
            .copied()
            .filter(|&u| body.inputs(u).contains(&n))
            .collect()
    };
    let outputs: Vec<NodeId> = body.outputs.iter().map(|(_, n)| *n).collect();
    let max_level = level.values().copied().max().unwrap_or(0);
    let mut stages = Vec::new();
    for l in 0..=max_level {
        // Reductions of this level first (they read lower levels), in schedule order.
        for &n in &order {
            if level[&n] == l && is_reduction(&body.node(n).op) {
                stages.push(Stage::Op(n));
            }
        }
        let members: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&n| {
                level[&n] == l && !is_reduction(&body.node(n).op) && !is_leafish(&body.node(n).op)
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        // The loop's body: members, with outside values as inputs and constants copied in.
        let mut sub = Graph::new();
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        let mut inputs: Vec<NodeId> = Vec::new();
        for &m in &members {
            let mut args = Vec::new();
            for i in body.inputs(m) {
                let id = match map.get(&i) {
                    Some(&id) => id,
                    None => {
                        let node = body.node(i);
                        let id = if matches!(node.op, Op::Const { .. } | Op::Random { .. }) {
                            sub.add_ok(node.op.clone(), &[])
                        } else {
                            let k = inputs.len();
                            inputs.push(i);
                            sub.add_ok(
                                Op::Input {
                                    name: format!("in{k}"),
                                    ty: (node.ty.dtype, node.ty.shape.clone()),
                                },
                                &[],
                            )
                        };
                        map.insert(i, id);
                        id
                    }
                };
                args.push(id);
            }
            let id = sub.add(body.node(m).op.clone(), &args)?;
            map.insert(m, id);
        }
        let member_set: std::collections::HashSet<NodeId> = members.iter().copied().collect();
        let outs: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|&m| outputs.contains(&m) || users(m).iter().any(|u| !member_set.contains(u)))
            .collect();
        for (j, &o) in outs.iter().enumerate() {
            sub.set_output(format!("out{j}"), map[&o]);
        }
        if !loops::supported(&sub) {
            return Ok(None);
        }
        let kernel = loops::compile(jit, &sub, syms)?;
        stages.push(Stage::Loop {
            kernel,
            inputs,
            outputs: outs,
        });
    }
    Ok(Some(stages))
}

impl JitGraph {
    pub fn new(graph: Graph, threads: usize) -> Result<JitGraph, String> {
        let profile = std::env::var_os("DLC_PROFILE").map(|_| HashMap::new());
        Ok(JitGraph {
            profile,
            graph,
            jit: Jit::new()?,
            plans: HashMap::new(),
            prepared: HashMap::new(),
            threads: threads.max(1),
            pool: Default::default(),
            layouts: HashMap::new(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The CLIF of every kernel compiled so far.
    pub fn clif(&self) -> &[(String, String)] {
        &self.jit.clif
    }

    /// Plan (and compile) every kernel at the given sizes; one line per kernel saying how
    /// it runs. This is `dlc compile --emit plan`.
    pub fn plan_all(&mut self, syms: &HashMap<String, usize>) -> Result<Vec<String>, String> {
        let mut kernels: Vec<(u32, crate::ops::KernelKind)> = Vec::new();
        for n in self.graph.schedule() {
            if let Op::Fused { body, kind, .. } = self.graph.node(n).op {
                if !kernels.iter().any(|(b, _)| *b == body) {
                    kernels.push((body, kind));
                }
            }
        }
        let mut lines = Vec::new();
        for (body, kind) in kernels {
            let how = match self.plan(body, syms)? {
                Plan::Loop(k) if !k.splittable => format!(
                    "native row kernel (reductions in JIT code), {} inputs, outputs {:?}",
                    k.inputs, k.outputs
                ),
                Plan::Loop(k) => {
                    format!("native loop, {} inputs, outputs {:?}", k.inputs, k.outputs)
                }
                Plan::MatMul {
                    ta,
                    tb,
                    epilogue,
                    path,
                    ..
                } => format!(
                    "matmul (ta={ta}, tb={tb}) by {}{}",
                    match path {
                        GemmPath::Jit => "the JIT's F32X4 micro-kernel",
                        GemmPath::Crate => "the gemm crate",
                    },
                    if epilogue.is_some() {
                        " + native epilogue loop"
                    } else {
                        ""
                    }
                ),
                Plan::Staged(st) => {
                    let loops = st
                        .iter()
                        .filter(|x| matches!(x, Stage::Loop { .. }))
                        .count();
                    format!(
                        "staged: {loops} native loops around {} reductions (reductions by the reference semantics)",
                        st.len() - loops
                    )
                }
                Plan::Interpret => {
                    "reference interpreter (no code generator for this kernel yet)".to_string()
                }
            };
            lines.push(format!("kernel body={body} kind={}: {how}", kind.name()));
        }
        Ok(lines)
    }

    /// (fully native, planned) kernels: loops and matmuls count; staged kernels (whose
    /// reductions run by the reference semantics) and interpreted ones do not.
    pub fn native_kernels(&self) -> (usize, usize) {
        let all = || self.plans.values().flat_map(|m| m.values());
        let native = all()
            .filter(|p| matches!(p, Plan::Loop(_) | Plan::MatMul { .. }))
            .count();
        (native, all().count())
    }

    fn plan(&mut self, body_id: u32, syms: &HashMap<String, usize>) -> Result<&Plan, String> {
        let key = sym_key(syms);
        if !self
            .plans
            .get(&key)
            .is_some_and(|m| m.contains_key(&body_id))
        {
            let body = &self.graph.bodies[body_id as usize];
            let plan = if loops::supported(body) {
                Plan::Loop(loops::compile(&mut self.jit, body, syms)?)
            } else if let Some((a, b, ta, tb, epi)) = split_matmul(body) {
                let trivial = body.outputs.len() == 1
                    && matches!(body.node(body.outputs[0].1).op, Op::MatMul { .. });
                let a_shape = input_shape(body, a, syms)?;
                let (m, k) = if ta {
                    (a_shape[1], a_shape[0])
                } else {
                    (a_shape[0], a_shape[1])
                };
                let b_shape = input_shape(body, b, syms)?;
                let n = if tb { b_shape[0] } else { b_shape[1] };
                let path = sgemm::choose(m, n, k);
                if trivial {
                    Plan::MatMul {
                        a,
                        b,
                        ta,
                        tb,
                        epilogue: None,
                        path,
                    }
                } else if loops::supported(&epi) {
                    Plan::MatMul {
                        a,
                        b,
                        ta,
                        tb,
                        epilogue: Some(loops::compile(&mut self.jit, &epi, syms)?),
                        path,
                    }
                } else {
                    Plan::Interpret
                }
            } else if rows::supported(body) {
                Plan::Loop(rows::compile(&mut self.jit, body, syms)?)
            } else {
                match stage(&mut self.jit, body, syms)? {
                    Some(stages) => Plan::Staged(stages),
                    None => Plan::Interpret,
                }
            };
            self.plans
                .entry(key.clone())
                .or_default()
                .insert(body_id, plan);
        }
        Ok(&self.plans[&key][&body_id])
    }

    fn call_loop(
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

    /// Run a loop kernel; outputs listed in `into` (output, buffer) are written to the
    /// given buffers (an in-place update) and come back as `None`.
    fn call_loop_into(
        &self,
        k: &LoopKernel,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        into: &[(usize, *mut f32)],
    ) -> Vec<Option<ArrayD<f32>>> {
        let owned: Vec<ndarray::CowArray<f32, IxDyn>> =
            ins.iter().map(|a| a.as_standard_layout()).collect();
        let mut outs: Vec<Option<ArrayD<f32>>> = {
            let mut pool = self.pool.borrow_mut();
            (0..k.outputs.len())
                .map(|j| (!into.iter().any(|(o, _)| *o == j)).then(|| pool.array(&k.outputs[j])))
                .collect()
        };
        let mut ptrs: Vec<*mut f32> = owned.iter().map(|a| a.as_ptr() as *mut f32).collect();
        for (j, o) in outs.iter_mut().enumerate() {
            ptrs.push(match o {
                Some(a) => a.as_mut_ptr(),
                None => into.iter().find(|(o, _)| *o == j).expect("listed").1,
            });
        }
        let elems: usize = k.outputs.iter().map(|s| s.iter().product::<usize>()).sum();
        let parts = if k.splittable && elems >= PARALLEL_LOOP_MIN {
            self.threads
        } else {
            1
        };
        let (f, seed, step) = (k.f, env.seed, env.step);
        if parts == 1 {
            // SAFETY: the kernel reads `k.inputs` buffers and writes its outputs, each of
            // the shape it was compiled for (checked by the shape binding).
            unsafe { f(ptrs.as_ptr(), seed, step, 0, 1) };
        } else {
            let addr = ptrs.as_ptr() as usize;
            // SAFETY (both calls): as above; the parts write disjoint slices of the outputs.
            rayon::scope(|s| {
                for p in 1..parts {
                    s.spawn(move |_| unsafe {
                        f(addr as *const *mut f32, seed, step, p as u64, parts as u64)
                    });
                }
                // Part 0 on this thread: no thread is left waiting for the others.
                unsafe { f(addr as *const *mut f32, seed, step, 0, parts as u64) };
            });
        }
        outs
    }

    fn run_staged(
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

    /// Give a tensor the caller no longer needs (an old parameter) back for reuse.
    pub fn recycle(&self, a: ArrayD<f32>) {
        self.pool.borrow_mut().give(a);
    }

    fn gemm(
        &self,
        a: &ArrayViewD<f32>,
        b: &ArrayViewD<f32>,
        ta: bool,
        tb: bool,
        path: GemmPath,
        out: Option<*mut f32>,
    ) -> Option<ArrayD<f32>> {
        let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
        let (ar, ac) = (a.shape()[0], a.shape()[1]);
        let (br, bc) = (b.shape()[0], b.shape()[1]);
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
            return c;
        }
        let (cp, ap, bp) = (cp as usize, a.as_ptr() as usize, b.as_ptr() as usize);
        // Rows [r0, r1) of C from rows [r0, r1) of A: independent of every other row, so a
        // split across threads gives the same bits as one call.
        let rows = |r0: usize, r1: usize| {
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
        let parts = if m * n * k >= PARALLEL_GEMM_MIN {
            self.threads.min(m / 16).max(1)
        } else {
            1
        };
        if parts == 1 {
            rows(0, m);
        } else {
            // Fixed partition per thread count (DESIGN §3): row blocks of equal size.
            let bounds: Vec<usize> = (0..=parts).map(|p| p * m / parts).collect();
            rayon::scope(|s| {
                for w in bounds.windows(2).skip(1) {
                    let (r0, r1) = (w[0], w[1]);
                    let rows = &rows;
                    s.spawn(move |_| rows(r0, r1));
                }
                rows(bounds[0], bounds[1]);
            });
        }
        c
    }

    fn run_kernel(
        &mut self,
        body_id: u32,
        ins: &[ArrayViewD<f32>],
        env: &Env<f32>,
        syms: &HashMap<String, usize>,
        key: &[(String, usize)],
        into: &[(usize, *mut f32)],
    ) -> Result<Vec<Option<ArrayD<f32>>>, String> {
        let planned = self
            .plans
            .get(key)
            .is_some_and(|m| m.contains_key(&body_id));
        if !planned {
            self.plan(body_id, syms)?;
        }
        let plan = &self.plans[key][&body_id];
        if !into.is_empty() && !matches!(plan, Plan::Loop(_) | Plan::MatMul { .. }) {
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
                path,
            } => match epilogue {
                None => {
                    let out = into.iter().find(|(o, _)| *o == 0).map(|x| x.1);
                    vec![self.gemm(&ins[*a], &ins[*b], *ta, *tb, *path, out)]
                }
                Some(k) => {
                    let c = self
                        .gemm(&ins[*a], &ins[*b], *ta, *tb, *path, None)
                        .expect("a pool buffer");
                    let mut all: Vec<ArrayViewD<f32>> = ins.to_vec();
                    all.push(c.view());
                    let outs = self.call_loop_into(k, &all, env, into);
                    self.recycle(c);
                    outs
                }
            },
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

    fn prepare(&mut self, roots: Vec<NodeId>, donate: &[(usize, String)]) -> std::rc::Rc<Prepared> {
        let key = (roots.clone(), donate.to_vec());
        if let Some(p) = self.prepared.get(&key) {
            return p.clone();
        }
        let order = self.graph.schedule_from(&roots);
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
                _ => Action::Other,
            })
            .collect();
        let inputs: Vec<Vec<usize>> = order
            .iter()
            .map(|&n| self.graph.inputs(n).iter().map(|i| pos[i]).collect())
            .collect();
        let inplace = inplace_candidates(&actions, &inputs, &roots, &pos, donate);
        let p = std::rc::Rc::new(Prepared {
            id: self.prepared.len(),
            roots: roots.iter().map(|r| pos[r]).collect(),
            order,
            actions,
            inputs,
            inplace,
        });
        self.prepared.insert(key, p.clone());
        p
    }

    /// Run the graph and return the named outputs. Leaves are read in place; kernel
    /// outputs are moved, not copied, into the values of their nodes.
    pub fn run(&mut self, env: &Env<f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>, String> {
        let (out, _) = self.run_inner(env, outputs, &[], &HashMap::new())?;
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
            if let Some(a) = env.values.get_mut(leaf) {
                if a.is_standard_layout() {
                    bufs.insert(leaf.clone(), (a.as_mut_ptr() as usize, a.shape().to_vec()));
                }
            }
        }
        let (mut out, written) = self.run_inner(env, outputs, &pairs, &bufs)?;
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
    ) -> Result<(Vec<ArrayD<f32>>, Vec<(usize, String)>), String> {
        let roots: Vec<NodeId> = outputs
            .iter()
            .map(|o| {
                self.graph
                    .output(o)
                    .ok_or_else(|| format!("the graph has no output `{o}`"))
            })
            .collect::<Result<_, _>>()?;
        let prep = self.prepare(roots, donate);
        let mut written: Vec<(usize, String)> = Vec::new();
        // (body, output) pairs written in place: their nodes hold placeholders.
        let mut in_place: Vec<(u32, u32)> = Vec::new();
        let syms = interp::bind_symbols(&self.graph, env, &prep.order)?;
        let key = sym_key(&syms);
        self.layout(&prep, &syms)?;
        let lkey = (prep.id, key.clone());
        let arena_base = {
            let l = self.layouts.get_mut(&lkey).expect("laid out");
            // SAFETY: `base` is inside the arena, which is not resized while it is used.
            unsafe { l.arena.as_mut_ptr().add(l.base) as usize }
        };
        let mut vals: Vec<Option<CowArray<f32, IxDyn>>> =
            (0..prep.order.len()).map(|_| None).collect();
        let mut kernels: HashMap<u32, Vec<Option<ArrayD<f32>>>> = HashMap::new();
        for (i, action) in prep.actions.iter().enumerate() {
            let v: CowArray<f32, IxDyn> = match action {
                Action::Leaf(name) => CowArray::from(
                    env.values
                        .get(name)
                        .ok_or_else(|| format!("no value given for `{name}`"))?
                        .view(),
                ),
                Action::Kernel { body, output } => {
                    if !kernels.contains_key(body) {
                        let refs: Vec<ArrayViewD<f32>> = prep.inputs[i]
                            .iter()
                            .map(|&j| vals[j].as_ref().expect("operand computed").view())
                            .collect();
                        // Calls that plan (and compile) the kernel are not profiled.
                        let planned = self.plans.get(&key).is_some_and(|m| m.contains_key(body));
                        let t0 = (self.profile.is_some() && planned).then(std::time::Instant::now);
                        let inplace = match prep.inplace.get(&i) {
                            Some(cands) => self.inplace_buffers(*body, &syms, cands, bufs)?,
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
                        for (&(bd, o), &off) in &self.layouts[&lkey].slots {
                            if bd == *body {
                                // SAFETY: the slot lies inside the arena (memory plan).
                                into.push((o as usize, unsafe {
                                    (arena_base as *mut f32).add(off)
                                }));
                            }
                        }
                        let out = self.run_kernel(*body, &refs, env, &syms, &key, &into)?;
                        if let (Some(p), Some(t0)) = (&mut self.profile, t0) {
                            let e = p.entry(*body).or_default();
                            e.0 += t0.elapsed().as_secs_f64();
                            e.1 += 1;
                        }
                        kernels.insert(*body, out);
                    }
                    if in_place.contains(&(*body, *output)) {
                        // Written over its leaf; the caller takes it from there.
                        vals[i] = Some(CowArray::from(ArrayD::zeros(IxDyn(&[0]))));
                        continue;
                    }
                    if let Some(&off) = self.layouts[&lkey].slots.get(&(*body, *output)) {
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
                        vals[i] = Some(CowArray::from(view));
                        continue;
                    }
                    let slot = kernels
                        .get_mut(body)
                        .and_then(|k| k.get_mut(*output as usize))
                        .ok_or_else(|| format!("kernel {body} has no output {output}"))?;
                    CowArray::from(
                        slot.take()
                            .ok_or_else(|| format!("kernel {body} output {output} used twice"))?,
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
        }
        let mut out: Vec<ArrayD<f32>> = Vec::with_capacity(prep.roots.len());
        for (k, &r) in prep.roots.iter().enumerate() {
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
        // Intermediate values go back to the pool for the next run.
        let mut pool = self.pool.borrow_mut();
        for v in vals.into_iter().flatten() {
            if v.is_owned() {
                pool.give(v.into_owned());
            }
        }
        Ok((out, written))
    }

    /// The memory layout of a schedule at some sizes (planned once): every value a loop or
    /// matmul kernel writes that is not a requested output gets a slot in the arena.
    fn layout(&mut self, prep: &Prepared, syms: &HashMap<String, usize>) -> Result<(), String> {
        let key = sym_key(syms);
        if self.layouts.contains_key(&(prep.id, key.clone())) {
            return Ok(());
        }
        let actions = &prep.actions;
        let mut first: HashMap<u32, usize> = HashMap::new();
        for (i, a) in actions.iter().enumerate() {
            if let Action::Kernel { body, .. } = a {
                first.entry(*body).or_insert(i);
            }
        }
        let mut bodies: Vec<u32> = first.keys().copied().collect();
        bodies.sort();
        for b in bodies {
            self.plan(b, syms)?;
        }
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
        for (u, ins) in prep.inputs.iter().enumerate() {
            for &i in ins {
                users[i].push(u);
            }
        }
        // Last reader, following reshapes (views of the value) to their readers; None if
        // the value or a view of it is requested (it must outlive the run).
        let is_root = |p: usize| prep.roots.contains(&p);
        fn last_use(
            p: usize,
            users: &[Vec<usize>],
            actions: &[Action],
            is_root: &dyn Fn(usize) -> bool,
        ) -> Option<usize> {
            if is_root(p) {
                return None;
            }
            let mut last = p;
            for &u in &users[p] {
                last = last.max(u);
                if matches!(actions[u], Action::Reshape(_)) {
                    last = last.max(last_use(u, users, actions, is_root)?);
                }
            }
            Some(last)
        }
        let mut lives = Vec::new();
        let mut keys = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            let Action::Kernel { body, output } = a else {
                continue;
            };
            let native = matches!(
                self.plans[&key].get(body),
                Some(Plan::Loop(_) | Plan::MatMul { .. })
            );
            let Some(last) = last_use(i, &users, actions, &is_root) else {
                continue;
            };
            if !native {
                continue;
            }
            let dims = interp::concrete_shape(&self.graph.ty(prep.order[i]).shape, syms)?;
            lives.push(Life {
                first: first[body],
                last,
                bytes: 4 * dims.iter().product::<usize>(),
            });
            keys.push((*body, *output));
        }
        let plan = memory::plan(&lives);
        let align = memory::ALIGN / 4;
        let arena = vec![0.0f32; plan.arena_bytes / 4 + align];
        let base = arena.as_ptr().align_offset(memory::ALIGN);
        let slots = keys
            .into_iter()
            .zip(&plan.offsets)
            .map(|(k, off)| (k, off / 4))
            .collect();
        self.layouts.insert(
            (prep.id, key),
            Layout {
                slots,
                arena,
                base,
                plan,
            },
        );
        Ok(())
    }

    /// The memory plan of a run of the given outputs at the given sizes (for `--stats`).
    pub fn memory_plan(
        &mut self,
        outputs: &[&str],
        syms: &HashMap<String, usize>,
    ) -> Result<MemPlan, String> {
        let roots: Vec<NodeId> = outputs
            .iter()
            .map(|o| {
                self.graph
                    .output(o)
                    .ok_or_else(|| format!("the graph has no output `{o}`"))
            })
            .collect::<Result<_, _>>()?;
        let prep = self.prepare(roots, &[]);
        self.layout(&prep, syms)?;
        Ok(self.layouts[&(prep.id, sym_key(syms))].plan.clone())
    }

    /// The in-place candidates of a kernel that its plan allows: a loop kernel whose
    /// output may share the operand's buffer, with the donated buffer of the right shape.
    fn inplace_buffers<'c>(
        &mut self,
        body: u32,
        syms: &HashMap<String, usize>,
        cands: &'c [InPlace],
        bufs: &HashMap<String, (usize, Vec<usize>)>,
    ) -> Result<Vec<&'c InPlace>, String> {
        let Plan::Loop(k) = self.plan(body, syms)? else {
            return Ok(Vec::new());
        };
        Ok(cands
            .iter()
            .filter(|c| {
                k.aliasable.contains(&(c.output, c.operand))
                    && bufs
                        .get(&c.leaf)
                        .is_some_and(|(_, shape)| *shape == k.outputs[c.output])
            })
            .collect())
    }
}

/// Kernel outputs that may be written over a donated leaf, by the schedule position of
/// the kernel's first node: the output is requested once and read by no other node, and
/// every reader of the leaf is a kernel that runs no later than this one.
fn inplace_candidates(
    actions: &[Action],
    inputs: &[Vec<usize>],
    roots: &[NodeId],
    pos: &HashMap<NodeId, usize>,
    donate: &[(usize, String)],
) -> HashMap<usize, Vec<InPlace>> {
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
    for (u, ins) in inputs.iter().enumerate() {
        for &i in ins {
            users[i].push(u);
        }
    }
    let mut first: HashMap<u32, usize> = HashMap::new();
    for (i, a) in actions.iter().enumerate() {
        if let Action::Kernel { body, .. } = a {
            first.entry(*body).or_insert(i);
        }
    }
    let runs_at = |p: usize| match &actions[p] {
        Action::Kernel { body, .. } => Some(first[body]),
        _ => None,
    };
    let mut out: HashMap<usize, Vec<InPlace>> = HashMap::new();
    let mut used_leaves: Vec<&str> = Vec::new();
    for (root, leaf) in donate {
        let Some(&r) = roots.get(*root) else { continue };
        let p = pos[&r];
        let Action::Kernel { body, output } = &actions[p] else {
            continue;
        };
        if roots.iter().filter(|&&x| x == r).count() != 1 || !users[p].is_empty() {
            continue;
        }
        let at = first[body];
        let is_leaf = |q: usize| matches!(&actions[q], Action::Leaf(n) if n == leaf);
        let operands: Vec<usize> = (0..inputs[at].len())
            .filter(|&j| is_leaf(inputs[at][j]))
            .collect();
        let [operand] = operands[..] else { continue };
        let lp = inputs[at][operand];
        let last_reader = users[lp]
            .iter()
            .all(|&u| runs_at(u).is_some_and(|t| t <= at));
        if last_reader && !used_leaves.contains(&leaf.as_str()) {
            used_leaves.push(leaf);
            out.entry(at).or_default().push(InPlace {
                output: *output as usize,
                operand,
                leaf: leaf.clone(),
                root: *root,
            });
        }
    }
    out
}
