//! Where values live: the arena of the memory plan (`memory.rs`) laid out per schedule and
//! sizes, the pool of buffers for what the arena does not hold, and the outputs written in
//! place over donated leaves.

use super::exec::{Action, InPlace, JitGraph, Prepared};
use super::memory::{self, Life, MemPlan};
use super::plan::{Plan, sym_key};
use crate::interp;
use crate::ir::NodeId;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;

/// Buffers of finished values, by length, reused for kernel outputs: a training step
/// then allocates (and page-faults) nothing once it has run once.
#[derive(Default)]
pub struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    /// Buffers allocated because none of their length was free.
    pub(super) allocated: usize,
}

impl Pool {
    /// Buffers kept per length.
    const KEEP: usize = 16;

    /// A buffer of `n` elements whose contents are stale: the caller overwrites all.
    pub(super) fn take(&mut self, n: usize) -> Vec<f32> {
        match self.free.get_mut(&n).and_then(|v| v.pop()) {
            Some(v) => v,
            None => {
                self.allocated += 1;
                vec![0.0; n]
            }
        }
    }

    pub(super) fn array(&mut self, shape: &[usize]) -> ArrayD<f32> {
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

/// Where the native kernels of one schedule at one set of sizes write their
/// Arena slots by kernel body: (kernel output, float offset) of each output placed there.
pub(super) type Slots = HashMap<u32, Vec<(u32, usize)>>;

/// intermediate values: fixed offsets in one arena (`memory.rs`).
pub(super) struct Layout {
    /// Float offset in the arena of each (kernel body, output) placed there.
    pub(super) slots: std::rc::Rc<Slots>,
    pub(super) arena: Vec<f32>,
    /// Float offset of the arena's first cache-aligned byte.
    pub(super) base: usize,
}

impl JitGraph {
    /// The index in `layouts` of the memory layout of this schedule at these sizes (`key`,
    /// which is `sym_key(syms)`): the arena of [`arena_plan`](Self::arena_plan), allocated
    /// on first use.
    pub(super) fn layout(
        &mut self,
        prep: &Prepared,
        syms: &HashMap<String, usize>,
        key: &[(String, usize)],
    ) -> Result<usize, String> {
        debug_assert_eq!(key, sym_key(syms), "the key of these sizes");
        if let Some(i) = self
            .layouts
            .iter()
            .position(|(id, k, _)| *id == prep.id && k[..] == *key)
        {
            return Ok(i);
        }
        let (plan, keys) = self.arena_plan(prep, syms)?;
        let align = memory::ALIGN / 4;
        let arena = vec![0.0f32; plan.arena_bytes / 4 + align];
        let base = arena.as_ptr().align_offset(memory::ALIGN);
        let mut slots = Slots::new();
        for ((body, output), off) in keys.into_iter().zip(&plan.offsets) {
            slots.entry(body).or_default().push((output, off / 4));
        }
        let slots = std::rc::Rc::new(slots);
        self.layouts
            .push((prep.id, key.to_vec(), Layout { slots, arena, base }));
        Ok(self.layouts.len() - 1)
    }

    /// The arena of this schedule at these sizes, without allocating it: the plan, and the
    /// (kernel body, output) of each value placed, in the plan's order. Every value a loop
    /// or matmul kernel writes that is not a requested output gets a slot.
    fn arena_plan(
        &mut self,
        prep: &Prepared,
        syms: &HashMap<String, usize>,
    ) -> Result<(MemPlan, Vec<(u32, u32)>), String> {
        let key = sym_key(syms);
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
                Some(Plan::Loop(_) | Plan::MatMul { .. } | Plan::Window { .. } | Plan::Copy { .. })
            );
            let Some(last) = last_use(i, &users, actions, &is_root) else {
                continue;
            };
            if !native {
                continue;
            }
            let dims = interp::concrete_shape(&self.graph.ty(prep.order[i]).shape, syms)?;
            let bytes = dims
                .iter()
                .try_fold(4usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("a value of shape {dims:?} has more bytes than a usize"))?;
            lives.push(Life {
                first: first[body],
                last,
                bytes,
            });
            keys.push((*body, *output));
        }
        Ok((memory::plan(&lives), keys))
    }

    /// The memory plan of a run of the given outputs at the given sizes (for `--stats`, and
    /// to check before training that the arena fits), without allocating the arena.
    pub fn memory_plan(
        &mut self,
        outputs: &[&str],
        syms: &HashMap<String, usize>,
    ) -> Result<MemPlan, String> {
        let roots = self.roots(outputs)?;
        let prep = self.prepare(&roots, &[]);
        Ok(self.arena_plan(&prep, syms)?.0)
    }

    /// The in-place candidates of a kernel that its plan allows: a loop kernel whose
    /// output may share the operand's buffer, with the donated buffer of the right shape.
    pub(super) fn inplace_buffers<'c>(
        plan: &Plan,
        cands: &'c [InPlace],
        bufs: &HashMap<String, (usize, Vec<usize>)>,
    ) -> Vec<&'c InPlace> {
        let Plan::Loop(k) = plan else {
            return Vec::new();
        };
        cands
            .iter()
            .filter(|c| {
                k.aliasable.contains(&(c.output, c.operand))
                    && bufs
                        .get(&c.leaf)
                        .is_some_and(|(_, shape)| *shape == k.outputs[c.output])
            })
            .collect()
    }
}

/// Kernel outputs that may be written over a donated leaf, by the schedule position of
/// the kernel's first node: the output is requested once and read by no other node, and
/// every reader of the leaf is a kernel or a scan that runs no later than this one.
pub(super) fn inplace_candidates(
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
    // Where each kernel and each scan (a body on its operands) runs: at its first output.
    let mut first: HashMap<u32, usize> = HashMap::new();
    let mut first_scan: HashMap<(u32, &[usize]), usize> = HashMap::new();
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::Kernel { body, .. } => first.entry(*body).or_insert(i),
            Action::Scan { body, .. } => first_scan.entry((*body, &inputs[i])).or_insert(i),
            _ => continue,
        };
    }
    let runs_at = |p: usize| match &actions[p] {
        Action::Kernel { body, .. } => Some(first[body]),
        Action::Scan { body, .. } => Some(first_scan[&(*body, &inputs[p][..])]),
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
