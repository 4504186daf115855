//! Fusion: a deterministic greedy pass over the extracted graph that groups ops into
//! kernels, in XLA's vocabulary:
//!
//! - softmax + cross-entropy template: a `log_softmax` and every elementwise op and
//!   reduction downstream of it (the loss and its gradient) form one kernel;
//! - output fusion: a matmul with the elementwise ops after it (bias, activation,
//!   dropout mask, the backward ReLU mask);
//! - input fusion: a reduction with the elementwise ops before it;
//! - loop fusion: chains of elementwise ops;
//! - the optimizer update: every elementwise group that only feeds `new:*` outputs
//!   becomes one multi-output kernel.
//!
//! Constants and random draws are copied into each kernel that reads them (random draws
//! are counter-based, so a copy draws the same numbers). Reshapes outside kernels are
//! views and launch nothing. A grouping is only taken if it keeps the kernel graph
//! acyclic. Each kernel becomes a body graph (`Graph::bodies`) and one `fused` node per
//! output.

use crate::ir::{Graph, NodeId};
use crate::ops::{KernelKind, Op};
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Class {
    Leaf,
    Generator,
    View,
    Elementwise,
    Reduction,
    MatMul,
    Copy,
    Opaque,
}

pub(crate) fn class(op: &Op) -> Class {
    use Op::*;
    match op {
        Input { .. } | Param { .. } | State { .. } => Class::Leaf,
        Const { .. } | Random { .. } => Class::Generator,
        Reshape { .. } => Class::View,
        Neg | Exp | Log | Sqrt | Tanh | Sigmoid | Relu | Abs | Sign | StopGradient | Cast(_) => {
            Class::Elementwise
        }
        Add | Sub | Mul | Div | Pow | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne | Select => {
            Class::Elementwise
        }
        Broadcast { .. } | OneHot { .. } => Class::Elementwise,
        Sum { .. }
        | Mean { .. }
        | Max { .. }
        | ArgMax { .. }
        | SumTo { .. }
        | Softmax { .. }
        | LogSoftmax { .. } => Class::Reduction,
        MatMul { .. } | ContractLeading => Class::MatMul,
        // Window ops fuse like matmuls: an elementwise epilogue on their output.
        Conv2d { .. }
        | Conv2dBackInput { .. }
        | Conv2dBackFilter { .. }
        | MaxPool2d { .. }
        | MaxPool2dBack { .. }
        | AvgPool2d { .. }
        | AvgPool2dBack { .. } => Class::MatMul,
        Transpose { .. } | Concat { .. } | Slice { .. } | Gather | ScatterAdd { .. } => Class::Copy,
        // A kernel of its own, like the data-movement ops.
        SpMM | SpMMT | Knn { .. } | GatherPoints | ScatterPoints { .. } => Class::Copy,
        Scan { .. } | Fused { .. } | Vjp(_) => Class::Opaque,
    }
}

struct Group {
    members: BTreeSet<usize>,
    template: bool,
    matmul: bool,
    reduction: bool,
    copy: bool,
    update: bool,
}

struct Fuser<'a> {
    g: &'a Graph,
    order: Vec<NodeId>,
    pos: HashMap<NodeId, usize>,
    ins: Vec<Vec<usize>>,
    users: Vec<Vec<usize>>,
    is_output: Vec<Option<String>>,
    group: Vec<Option<usize>>,
    groups: Vec<Group>,
}

impl<'a> Fuser<'a> {
    fn new(g: &'a Graph) -> Fuser<'a> {
        let order = g.schedule();
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let ins: Vec<Vec<usize>> = order
            .iter()
            .map(|&n| g.inputs(n).iter().map(|i| pos[i]).collect())
            .collect();
        let mut users = vec![Vec::new(); order.len()];
        for (i, v) in ins.iter().enumerate() {
            for &p in v {
                if !users[p].contains(&i) {
                    users[p].push(i);
                }
            }
        }
        let mut is_output = vec![None; order.len()];
        for (name, n) in &g.outputs {
            is_output[pos[n]].get_or_insert_with(|| name.clone());
        }
        let group = vec![None; order.len()];
        Fuser {
            g,
            order,
            pos,
            ins,
            users,
            is_output,
            group,
            groups: Vec::new(),
        }
    }

    fn class(&self, i: usize) -> Class {
        class(&self.g.node(self.order[i]).op)
    }

    /// Nodes the group's members depend on, outside the group (excluding leaves).
    fn ancestors(&self, gid: usize) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack: Vec<usize> = self.groups[gid]
            .members
            .iter()
            .flat_map(|&m| self.ins[m].iter().copied())
            .collect();
        while let Some(n) = stack.pop() {
            if self.groups[gid].members.contains(&n) || !seen.insert(n) {
                continue;
            }
            stack.extend(self.ins[n].iter().copied());
            // A kernel runs as a unit: what one member needs, every member waits for.
            if let Some(g) = self.group[n] {
                stack.extend(self.groups[g].members.iter().copied());
            }
        }
        seen
    }

    /// Whether node `p` (an operand of the group) can join it without a cycle: none of
    /// its users outside the group may feed the group.
    fn can_absorb_producer(&self, gid: usize, p: usize) -> bool {
        let anc = self.ancestors(gid);
        self.users[p]
            .iter()
            .all(|u| self.groups[gid].members.contains(u) || !anc.contains(u))
    }

    /// Whether node `u` (a user of the group) can join it: none of its other operands
    /// may depend on the group, counting kernels as units (an operand computed by another
    /// kernel waits for everything that kernel needs: the VAE's sampled code and its KL
    /// term share the mean, and a kernel taking one would otherwise feed the other's).
    fn can_absorb_consumer(&self, gid: usize, u: usize) -> bool {
        let members = &self.groups[gid].members;
        self.ins[u]
            .iter()
            .filter(|p| !members.contains(p))
            .all(|&p| {
                // Does p depend on a member? Search upstream through nodes and kernels.
                let mut stack = vec![p];
                let mut seen = HashSet::new();
                while let Some(n) = stack.pop() {
                    if members.contains(&n) {
                        return false;
                    }
                    if !seen.insert(n) {
                        continue;
                    }
                    stack.extend(self.ins[n].iter().copied());
                    if let Some(g) = self.group[n] {
                        stack.extend(self.groups[g].members.iter().copied());
                    }
                }
                true
            })
    }

    fn join(&mut self, gid: usize, n: usize) {
        self.group[n] = Some(gid);
        let c = self.class(n);
        let gr = &mut self.groups[gid];
        gr.members.insert(n);
        gr.matmul |= c == Class::MatMul;
        gr.reduction |= c == Class::Reduction;
    }

    fn new_group(&mut self, n: usize, template: bool) -> usize {
        let gid = self.groups.len();
        self.groups.push(Group {
            members: BTreeSet::new(),
            template,
            matmul: false,
            reduction: false,
            copy: false,
            update: false,
        });
        self.join(gid, n);
        self.groups[gid].copy = self.class(n) == Class::Copy;
        gid
    }

    /// Grow a group upstream through elementwise producers (and one matmul for an
    /// elementwise group: output fusion).
    fn absorb_producers(&mut self, gid: usize) {
        if self.groups[gid].copy {
            return;
        }
        // A matmul's operands are materialised: never grow through them.
        let mut blocked: HashSet<usize> = self.groups[gid]
            .members
            .iter()
            .copied()
            .filter(|&m| self.class(m) == Class::MatMul)
            .collect();
        loop {
            let mut grew = false;
            let cands: Vec<usize> = self.groups[gid]
                .members
                .iter()
                .filter(|m| !blocked.contains(m))
                .flat_map(|&m| self.ins[m].iter().copied())
                .filter(|&p| self.group[p].is_none())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .rev()
                .collect();
            for p in cands {
                if self.group[p].is_some() {
                    continue;
                }
                let ok = match self.class(p) {
                    Class::Elementwise | Class::View => true,
                    // The softmax-xent kernel reduces rows anyway: it takes the sums
                    // of its gradient in too.
                    // Only reductions over the kernel's rows: a sum over a weight matrix
                    // (weight decay added to the loss) is a kernel of its own.
                    Class::Reduction => {
                        self.groups[gid].template
                            && matches!(
                                self.g.node(self.order[p]).op,
                                Op::Sum { .. } | Op::Mean { .. } | Op::SumTo { .. }
                            )
                            && self.ins[p].first().is_some_and(|&x| {
                                let t = self.g.ty(self.order[x]);
                                matches!(t.shape.first(), Some(crate::types::Dim::Sym(_)))
                            })
                    }
                    Class::MatMul => {
                        let gr = &self.groups[gid];
                        !gr.matmul && !gr.reduction && !gr.template
                    }
                    _ => false,
                };
                if ok && self.can_absorb_producer(gid, p) {
                    self.join(gid, p);
                    if self.class(p) == Class::MatMul {
                        // The matmul's operands are materialised: stop here.
                        blocked.insert(p);
                    }
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
    }

    /// The softmax + cross-entropy template: a log-softmax and everything elementwise or
    /// reducing downstream of it.
    fn templates(&mut self) {
        for i in 0..self.order.len() {
            if !matches!(self.g.node(self.order[i]).op, Op::LogSoftmax { .. })
                || self.group[i].is_some()
            {
                continue;
            }
            let gid = self.new_group(i, true);
            let logits = self.ins[i][0];
            let siblings: Vec<usize> = self.users[logits]
                .iter()
                .copied()
                .filter(|&u| {
                    self.group[u].is_none()
                        && matches!(self.g.node(self.order[u]).op, Op::Softmax { .. })
                })
                .collect();
            for s in siblings {
                self.join(gid, s);
            }
            loop {
                let mut grew = false;
                let cands: BTreeSet<usize> = self.groups[gid]
                    .members
                    .iter()
                    .flat_map(|&m| self.users[m].iter().copied())
                    .filter(|&u| self.group[u].is_none())
                    .collect();
                for u in cands {
                    let ok = matches!(
                        self.class(u),
                        Class::Elementwise | Class::Reduction | Class::View
                    ) && !matches!(
                        self.g.node(self.order[u]).op,
                        Op::LogSoftmax { .. } | Op::Softmax { .. }
                    );
                    if ok && self.can_absorb_consumer(gid, u) {
                        self.join(gid, u);
                        grew = true;
                    }
                }
                if !grew {
                    break;
                }
            }
            self.absorb_producers(gid);
        }
    }

    fn greedy(&mut self) {
        for i in (0..self.order.len()).rev() {
            if self.group[i].is_some() {
                continue;
            }
            // Random numbers a product reads (a generator's noise) are drawn by a loop
            // kernel of their own: a matmul's operands are buffers.
            if matches!(self.g.node(self.order[i]).op, Op::Random { .. })
                && self.users[i]
                    .iter()
                    .any(|&u| self.class(u) == Class::MatMul)
            {
                self.new_group(i, false);
                continue;
            }
            match self.class(i) {
                Class::Leaf | Class::Generator | Class::View | Class::Opaque => continue,
                _ => {}
            }
            let gid = self.new_group(i, false);
            self.absorb_producers(gid);
        }
    }

    /// Members of `gid` read outside it: (node, by a graph output name or another node).
    fn external_users(&self, gid: usize) -> Vec<(usize, Option<usize>)> {
        let mut out = Vec::new();
        for &m in &self.groups[gid].members {
            if self.is_output[m].is_some() {
                out.push((m, None));
            }
            for &u in &self.users[m] {
                if self.group[u] != Some(gid) {
                    out.push((m, Some(u)));
                }
            }
        }
        out
    }

    /// The optimizer update: the elementwise ops whose every use is (eventually) a
    /// `new:*` output become one kernel, before any other grouping can split them.
    fn update_region(&mut self) {
        let n = self.order.len();
        let mut inside = vec![false; n];
        for i in (0..n).rev() {
            let fusible = matches!(self.class(i), Class::Elementwise | Class::View);
            let out_ok = match &self.is_output[i] {
                Some(name) => name.starts_with("new:"),
                None => !self.users[i].is_empty(),
            };
            inside[i] = fusible && out_ok && self.users[i].iter().all(|&u| inside[u]);
        }
        let members: Vec<usize> = (0..n)
            .filter(|&i| inside[i] && self.group[i].is_none())
            .collect();
        let Some(&first) = members.first() else {
            return;
        };
        let gid = self.new_group(first, false);
        for &m in &members[1..] {
            self.join(gid, m);
        }
        self.groups[gid].update = true;
    }

    /// Merge the elementwise groups that only feed `new:*` outputs (the optimizer
    /// update of every parameter) into one kernel.
    fn merge_updates(&mut self) {
        let mut cand: BTreeSet<usize> = (0..self.groups.len())
            .filter(|&k| {
                let gr = &self.groups[k];
                !gr.matmul && !gr.reduction && !gr.template && !gr.copy && !gr.members.is_empty()
            })
            .collect();
        loop {
            let drop: Vec<usize> = cand
                .iter()
                .copied()
                .filter(|&k| {
                    self.external_users(k).iter().any(|(m, u)| match u {
                        None => !self.is_output[*m]
                            .as_deref()
                            .is_some_and(|n| n.starts_with("new:")),
                        Some(u) => !self.group[*u].is_some_and(|gu| cand.contains(&gu)),
                    })
                })
                .collect();
            if drop.is_empty() {
                break;
            }
            for k in drop {
                cand.remove(&k);
            }
        }
        let Some(&first) = cand.iter().next() else {
            return;
        };
        for &k in cand.iter().skip(1) {
            let members: Vec<usize> = self.groups[k].members.iter().copied().collect();
            for m in members {
                self.group[m] = Some(first);
                self.groups[first].members.insert(m);
            }
            self.groups[k].members.clear();
        }
        self.groups[first].update = true;
    }

    fn kind(&self, gid: usize) -> KernelKind {
        let gr = &self.groups[gid];
        if gr.update {
            KernelKind::Update
        } else if gr.template {
            KernelKind::SoftmaxXent
        } else if gr.matmul
            && gr
                .members
                .iter()
                .any(|&m| self.g.node(self.order[m]).op.is_window())
        {
            KernelKind::Window
        } else if gr.matmul {
            KernelKind::MatMul
        } else if gr.reduction {
            KernelKind::Reduce
        } else if gr.copy {
            KernelKind::Copy
        } else {
            KernelKind::Loop
        }
    }

    /// Copy a generator (constant or random draw) into `dst`.
    fn clone_generator(&self, i: usize, dst: &mut Graph) -> NodeId {
        dst.add_ok(self.g.node(self.order[i]).op.clone(), &[])
    }

    fn build(self) -> Graph {
        // Units in a deterministic topological order: groups and ungrouped nodes.
        let unit_of = |i: usize| -> (u8, usize) {
            match self.group[i] {
                Some(k) => (1, k),
                None => (0, i),
            }
        };
        let mut deps: HashMap<(u8, usize), BTreeSet<(u8, usize)>> = HashMap::new();
        let mut first_pos: HashMap<(u8, usize), usize> = HashMap::new();
        for i in 0..self.order.len() {
            let u = unit_of(i);
            first_pos.entry(u).or_insert(i);
            let d = deps.entry(u).or_default();
            for &p in &self.ins[i] {
                let pu = unit_of(p);
                if pu != u {
                    d.insert(pu);
                }
            }
        }
        let mut ready: BTreeSet<(usize, (u8, usize))> = BTreeSet::new();
        let mut pending: HashMap<(u8, usize), usize> =
            deps.iter().map(|(u, d)| (*u, d.len())).collect();
        let mut dependents: HashMap<(u8, usize), Vec<(u8, usize)>> = HashMap::new();
        for (u, d) in &deps {
            for p in d {
                dependents.entry(*p).or_default().push(*u);
            }
        }
        for (u, &n) in &pending {
            if n == 0 {
                ready.insert((first_pos[u], *u));
            }
        }
        let mut out = Graph::new();
        out.bodies = self.g.bodies.clone();
        let mut new_id: HashMap<usize, NodeId> = HashMap::new();
        while let Some(&(fp, u)) = ready.iter().next() {
            ready.remove(&(fp, u));
            match u {
                (0, i) => {
                    let node = self.g.node(self.order[i]);
                    let ins: Vec<NodeId> = self.ins[i].iter().map(|p| new_id[p]).collect();
                    new_id.insert(i, out.add_ok(node.op.clone(), &ins));
                }
                (_, k) => self.emit_kernel(k, &mut out, &mut new_id),
            }
            for d in dependents.get(&u).cloned().unwrap_or_default() {
                let c = pending.get_mut(&d).expect("unit");
                *c -= 1;
                if *c == 0 {
                    ready.insert((first_pos[&d], d));
                }
            }
        }
        // Every unit was emitted: grouping never makes kernels wait for each other.
        assert!(
            pending.values().all(|&c| c == 0),
            "fusion made kernels that wait for each other (a bug in opt/fuse.rs)"
        );
        for (name, n) in &self.g.outputs {
            out.set_output(name.clone(), new_id[&self.pos[n]]);
        }
        out
    }

    fn emit_kernel(&self, k: usize, out: &mut Graph, new_id: &mut HashMap<usize, NodeId>) {
        let members = &self.groups[k].members;
        // Operands from outside (generators are copied in instead), in schedule order.
        let ext: Vec<usize> = members
            .iter()
            .flat_map(|&m| self.ins[m].iter().copied())
            .filter(|p| {
                !members.contains(p)
                    && (self.class(*p) != Class::Generator || self.group[*p].is_some())
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let outs: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| {
                self.is_output[m].is_some() || self.users[m].iter().any(|u| !members.contains(u))
            })
            .collect();
        let mut body = Graph::new();
        let mut local: HashMap<usize, NodeId> = HashMap::new();
        for (j, &p) in ext.iter().enumerate() {
            let t = self.g.ty(self.order[p]).clone();
            local.insert(
                p,
                body.add_ok(
                    Op::Input {
                        name: format!("in{j}"),
                        ty: (t.dtype, t.shape),
                    },
                    &[],
                ),
            );
        }
        for &m in members {
            let mut ins = Vec::new();
            for &p in &self.ins[m] {
                let id = match local.get(&p) {
                    Some(&id) => id,
                    None => {
                        let id = self.clone_generator(p, &mut body);
                        local.insert(p, id);
                        id
                    }
                };
                ins.push(id);
            }
            local.insert(m, body.add_ok(self.g.node(self.order[m]).op.clone(), &ins));
        }
        for (j, &o) in outs.iter().enumerate() {
            body.set_output(format!("out{j}"), local[&o]);
        }
        let bid = out.bodies.len() as u32;
        out.bodies.push(body);
        let kind = self.kind(k);
        let operands: Vec<NodeId> = ext.iter().map(|p| new_id[p]).collect();
        for (j, &o) in outs.iter().enumerate() {
            let t = self.g.ty(self.order[o]).clone();
            let n = out.add_ok(
                Op::Fused {
                    body: bid,
                    output: j as u32,
                    kind,
                    out: (t.dtype, t.shape),
                },
                &operands,
            );
            new_id.insert(o, n);
        }
    }
}

/// Group the graph's ops into fused kernels.
pub fn fuse(g: &Graph) -> Graph {
    let mut f = Fuser::new(g);
    f.update_region();
    f.templates();
    f.greedy();
    f.merge_updates();
    f.build()
}

/// Kernels one evaluation of a graph launches: fused kernels, plus ops left outside any
/// kernel that compute something (views, leaves and constants launch nothing); a scan
/// counts the kernels of one step of its body.
pub fn kernel_count(g: &Graph) -> usize {
    let mut bodies = BTreeSet::new();
    let mut scans = BTreeSet::new();
    let mut loose = 0;
    for n in g.schedule() {
        match &g.node(n).op {
            Op::Fused { body, .. } => {
                bodies.insert(*body);
            }
            Op::Scan { body, .. } => {
                if scans.insert(*body) {
                    loose += kernel_count(&g.bodies[*body as usize]);
                }
            }
            op => {
                if !matches!(class(op), Class::Leaf | Class::Generator | Class::View) {
                    loose += 1;
                }
            }
        }
    }
    bodies.len() + loose
}
