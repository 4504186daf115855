//! Simplification rules, as named data grouped by topic. Every rule is directional (its
//! right-hand side is never worse) and carries a sample graph on which it fires; the
//! tests check, for every rule, that the sample computes the same values before and
//! after the rule under the reference interpreter. No blanket commutativity or
//! associativity: those blow up the e-graph for no gain here.

use crate::autodiff::lang::{EGraph, ENode, Types};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::Type;
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};

pub type Rule = Rewrite<ENode, Types>;

/// A rule with a sample graph it applies to.
pub struct NamedRule {
    pub rewrite: Rule,
    /// Shapes of the sample's inputs (`in0`, `in1`, …; all f32).
    pub sample_inputs: &'static [&'static [usize]],
    /// Builds the sample from its inputs; returns the node the rule should rewrite.
    pub sample: fn(&mut Graph, &[NodeId]) -> NodeId,
}

impl NamedRule {
    pub fn name(&self) -> String {
        self.rewrite.name.to_string()
    }
}

fn pat(s: &str) -> Pattern<ENode> {
    s.parse()
        .unwrap_or_else(|e| panic!("bad rule pattern {s}: {e}"))
}

fn rw(
    name: &str,
    lhs: &str,
    rhs: &str,
    sample_inputs: &'static [&'static [usize]],
    sample: fn(&mut Graph, &[NodeId]) -> NodeId,
) -> NamedRule {
    let rewrite =
        Rewrite::new(name, pat(lhs), pat(rhs)).unwrap_or_else(|e| panic!("bad rule {name}: {e}"));
    NamedRule {
        rewrite,
        sample_inputs,
        sample,
    }
}

/// A rule on ops with attributes: matches every class holding a node of op `op` and
/// lets `apply` build the replacement from that node and the analysis.
#[derive(Clone)]
struct ByOp {
    op: &'static str,
    apply: fn(&mut EGraph, &ENode) -> Option<Id>,
}

impl Searcher<ENode, Types> for ByOp {
    fn search_eclass_with_limit(
        &self,
        eg: &EGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, ENode>> {
        (limit > 0 && eg[eclass].nodes.iter().any(|n| n.op.name() == self.op)).then(|| {
            SearchMatches {
                eclass,
                substs: vec![Subst::with_capacity(0)],
                ast: None,
            }
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<ENode, Types> for ByOp {
    fn apply_one(
        &self,
        eg: &mut EGraph,
        eclass: Id,
        _s: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _r: Symbol,
    ) -> Vec<Id> {
        let nodes: Vec<ENode> = eg[eclass]
            .nodes
            .iter()
            .filter(|n| n.op.name() == self.op)
            .cloned()
            .collect();
        let mut changed = false;
        for n in nodes {
            if let Some(id) = (self.apply)(eg, &n) {
                changed |= eg.union(eclass, id);
            }
        }
        if changed { vec![eclass] } else { vec![] }
    }
}

fn by_op(
    name: &str,
    op: &'static str,
    apply: fn(&mut EGraph, &ENode) -> Option<Id>,
    sample_inputs: &'static [&'static [usize]],
    sample: fn(&mut Graph, &[NodeId]) -> NodeId,
) -> NamedRule {
    let r = ByOp { op, apply };
    let rewrite =
        Rewrite::new(name, r.clone(), r).unwrap_or_else(|e| panic!("bad rule {name}: {e}"));
    NamedRule {
        rewrite,
        sample_inputs,
        sample,
    }
}

fn ty(eg: &EGraph, id: Id) -> Option<Type> {
    eg[id].data.ty.clone()
}

fn add(eg: &mut EGraph, op: Op, args: &[Id]) -> Id {
    eg.add(ENode {
        op,
        args: args.to_vec(),
    })
}

/// A node of the given op name in a class, if any (the first in the class's order).
fn find(eg: &EGraph, class: Id, name: &str) -> Option<ENode> {
    eg[class]
        .nodes
        .iter()
        .find(|n| n.op.name() == name)
        .cloned()
}

fn is_swap_last2(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
}

// -- sample helpers -------------------------------------------------------------

fn c(g: &mut Graph, v: f64) -> NodeId {
    g.scalar(v)
}

fn op1(g: &mut Graph, op: Op, a: NodeId) -> NodeId {
    g.add_ok(op, &[a])
}

fn op2(g: &mut Graph, op: Op, a: NodeId, b: NodeId) -> NodeId {
    g.add_ok(op, &[a, b])
}

const ONE: &[&[usize]] = &[&[2, 3]];
const TWO: &[&[usize]] = &[&[2, 3], &[2, 3]];

/// Identities, inverses and cheaper forms of arithmetic.
pub fn algebra() -> Vec<NamedRule> {
    vec![
        rw("add-zero", "(add ?x 0)", "?x", ONE, |g, i| {
            let z = c(g, 0.0);
            op2(g, Op::Add, i[0], z)
        }),
        rw("zero-add", "(add 0 ?x)", "?x", ONE, |g, i| {
            let z = c(g, 0.0);
            op2(g, Op::Add, z, i[0])
        }),
        rw("sub-zero", "(sub ?x 0)", "?x", ONE, |g, i| {
            let z = c(g, 0.0);
            op2(g, Op::Sub, i[0], z)
        }),
        rw("mul-one", "(mul ?x 1)", "?x", ONE, |g, i| {
            let o = c(g, 1.0);
            op2(g, Op::Mul, i[0], o)
        }),
        rw("one-mul", "(mul 1 ?x)", "?x", ONE, |g, i| {
            let o = c(g, 1.0);
            op2(g, Op::Mul, o, i[0])
        }),
        rw("div-one", "(div ?x 1)", "?x", ONE, |g, i| {
            let o = c(g, 1.0);
            op2(g, Op::Div, i[0], o)
        }),
        rw("neg-neg", "(neg (neg ?x))", "?x", ONE, |g, i| {
            let n = op1(g, Op::Neg, i[0]);
            op1(g, Op::Neg, n)
        }),
        rw(
            "sub-neg",
            "(sub ?a (neg ?b))",
            "(add ?a ?b)",
            TWO,
            |g, i| {
                let n = op1(g, Op::Neg, i[1]);
                op2(g, Op::Sub, i[0], n)
            },
        ),
        rw(
            "add-neg",
            "(add ?a (neg ?b))",
            "(sub ?a ?b)",
            TWO,
            |g, i| {
                let n = op1(g, Op::Neg, i[1]);
                op2(g, Op::Add, i[0], n)
            },
        ),
        rw(
            "neg-sub",
            "(neg (sub ?a ?b))",
            "(sub ?b ?a)",
            TWO,
            |g, i| {
                let s = op2(g, Op::Sub, i[0], i[1]);
                op1(g, Op::Neg, s)
            },
        ),
        rw("mul-neg-one", "(mul ?x -1)", "(neg ?x)", ONE, |g, i| {
            let m = c(g, -1.0);
            op2(g, Op::Mul, i[0], m)
        }),
        rw("pow-one", "(pow ?x 1)", "?x", ONE, |g, i| {
            let o = c(g, 1.0);
            op2(g, Op::Pow, i[0], o)
        }),
        rw("pow-two", "(pow ?x 2)", "(mul ?x ?x)", ONE, |g, i| {
            let t = c(g, 2.0);
            op2(g, Op::Pow, i[0], t)
        }),
        rw("stop-gradient", "(stop_gradient ?x)", "?x", ONE, |g, i| {
            op1(g, Op::StopGradient, i[0])
        }),
        by_op(
            "exp-log-softmax",
            "exp",
            |eg, n| {
                let Op::LogSoftmax { axis } = find(eg, n.args[0], "log_softmax")?.op else {
                    return None;
                };
                let z = find(eg, n.args[0], "log_softmax")?.args[0];
                Some(add(eg, Op::Softmax { axis }, &[z]))
            },
            ONE,
            |g, i| {
                let l = op1(g, Op::LogSoftmax { axis: 1 }, i[0]);
                op1(g, Op::Exp, l)
            },
        ),
    ]
}

/// Whether a class holds zeros: a broadcast of the constant 0.
fn is_zeros(eg: &EGraph, id: Id) -> bool {
    eg[id].nodes.iter().any(|n| {
        matches!(n.op, Op::Broadcast { .. })
            && eg[n.args[0]]
                .nodes
                .iter()
                .any(|m| m.op.scalar_value() == Some(0.0))
    })
}

/// The parts of a concatenation along `axis` in a class: (length, None for zeros).
fn concat_parts(eg: &EGraph, class: Id, axis: usize) -> Option<Vec<(usize, Option<Id>)>> {
    let n = eg[class]
        .nodes
        .iter()
        .find(|n| n.op == Op::Concat { axis })?;
    n.args
        .iter()
        .map(|&p| {
            let len = ty(eg, p)?.shape.get(axis)?.known()?;
            Some((len, (!is_zeros(eg, p)).then_some(p)))
        })
        .collect()
}

/// `concat(a, 0) + concat(0, b)` → `concat(a, b)`: the sum of gradients of disjoint slices
/// of one value (an LSTM's four gates) as one concatenation, not a sum of zero-padded
/// copies. Zero parts may be cut where the other side's parts start; nonzero parts never.
fn add_disjoint_concats(eg: &mut EGraph, n: &ENode) -> Option<Id> {
    let [a, b] = n.args[..] else { return None };
    let (ta, tb) = (ty(eg, a)?, ty(eg, b)?);
    if ta.shape != tb.shape {
        return None;
    }
    let axis = eg[a].nodes.iter().find_map(|n| match n.op {
        Op::Concat { axis } => Some(axis),
        _ => None,
    })?;
    let (pa, pb) = (concat_parts(eg, a, axis)?, concat_parts(eg, b, axis)?);
    // Part boundaries of each side, and the nonzero parts as (start, end, class).
    let spans = |parts: &[(usize, Option<Id>)]| {
        let mut at = 0;
        let mut cuts = Vec::new();
        let mut live = Vec::new();
        for &(len, id) in parts {
            if let Some(id) = id {
                live.push((at, at + len, id));
            }
            at += len;
            cuts.push(at);
        }
        (at, cuts, live)
    };
    let (na, cuts_a, live_a) = spans(&pa);
    let (nb, cuts_b, live_b) = spans(&pb);
    let cut_inside = |live: &[(usize, usize, Id)], cuts: &[usize]| {
        live.iter()
            .any(|&(s, e, _)| cuts.iter().any(|&c| s < c && c < e))
    };
    if na != nb || cut_inside(&live_a, &cuts_b) || cut_inside(&live_b, &cuts_a) {
        return None;
    }
    let mut live: Vec<(usize, usize, Id)> = live_a.into_iter().chain(live_b).collect();
    live.sort_by_key(|&(s, _, _)| s);
    if live.windows(2).any(|w| w[0].1 > w[1].0) {
        return None; // both sides nonzero somewhere: a real sum
    }
    let zero = add(eg, Op::scalar(0.0), &[]);
    let mut parts = Vec::new();
    let mut at = 0;
    let gap = |eg: &mut EGraph, len: usize| {
        let mut shape = ta.shape.clone();
        shape[axis] = crate::types::Dim::Known(len);
        add(eg, Op::Broadcast { shape }, &[zero])
    };
    for (s, e, id) in live {
        if s > at {
            parts.push(gap(eg, s - at));
        }
        parts.push(id);
        at = e;
    }
    if at < na {
        parts.push(gap(eg, na - at));
    }
    Some(match parts[..] {
        [one] => one,
        _ => add(eg, Op::Concat { axis }, &parts),
    })
}

/// Layout: transposes, reshapes and broadcasts that cancel or fold into their users.
pub fn layout() -> Vec<NamedRule> {
    vec![
        by_op(
            "add-disjoint-concats",
            "add",
            add_disjoint_concats,
            TWO,
            |g, i| {
                use crate::types::Dim::Known as K;
                let zero = c(g, 0.0);
                let z = op1(
                    g,
                    Op::Broadcast {
                        shape: vec![K(2), K(3)],
                    },
                    zero,
                );
                let a = op2(g, Op::Concat { axis: 1 }, i[0], z);
                let b = op2(g, Op::Concat { axis: 1 }, z, i[1]);
                op2(g, Op::Add, a, b)
            },
        ),
        by_op(
            "transpose-transpose",
            "transpose",
            |eg, n| {
                let Op::Transpose { perm } = &n.op else {
                    return None;
                };
                let inner = find(eg, n.args[0], "transpose")?;
                let Op::Transpose { perm: p2 } = &inner.op else {
                    return None;
                };
                let composed: Vec<usize> = perm.iter().map(|&i| p2[i]).collect();
                if composed.iter().enumerate().all(|(i, &p)| i == p) {
                    Some(inner.args[0])
                } else {
                    Some(add(eg, Op::Transpose { perm: composed }, &[inner.args[0]]))
                }
            },
            &[&[2, 3, 4]],
            |g, i| {
                let t = op1(
                    g,
                    Op::Transpose {
                        perm: vec![1, 2, 0],
                    },
                    i[0],
                );
                op1(
                    g,
                    Op::Transpose {
                        perm: vec![2, 0, 1],
                    },
                    t,
                )
            },
        ),
        by_op(
            "reshape-reshape",
            "reshape",
            |eg, n| {
                let Op::Reshape { shape } = &n.op else {
                    return None;
                };
                let inner = find(eg, n.args[0], "reshape")?;
                Some(add(
                    eg,
                    Op::Reshape {
                        shape: shape.clone(),
                    },
                    &[inner.args[0]],
                ))
            },
            &[&[2, 3, 4]],
            |g, i| {
                use crate::types::Dim::Known as K;
                let r = op1(
                    g,
                    Op::Reshape {
                        shape: vec![K(6), K(4)],
                    },
                    i[0],
                );
                op1(g, Op::Reshape { shape: vec![K(24)] }, r)
            },
        ),
        by_op(
            "reshape-noop",
            "reshape",
            |eg, n| {
                let Op::Reshape { shape } = &n.op else {
                    return None;
                };
                (ty(eg, n.args[0])?.shape == *shape).then_some(n.args[0])
            },
            ONE,
            |g, i| {
                use crate::types::Dim::Known as K;
                op1(
                    g,
                    Op::Reshape {
                        shape: vec![K(2), K(3)],
                    },
                    i[0],
                )
            },
        ),
        by_op(
            "broadcast-noop",
            "broadcast",
            |eg, n| {
                let Op::Broadcast { shape } = &n.op else {
                    return None;
                };
                (ty(eg, n.args[0])?.shape == *shape).then_some(n.args[0])
            },
            ONE,
            |g, i| {
                use crate::types::Dim::Known as K;
                op1(
                    g,
                    Op::Broadcast {
                        shape: vec![K(2), K(3)],
                    },
                    i[0],
                )
            },
        ),
        by_op(
            "sum-to-noop",
            "sum_to",
            |eg, n| {
                let Op::SumTo { shape } = &n.op else {
                    return None;
                };
                (ty(eg, n.args[0])?.shape == *shape).then_some(n.args[0])
            },
            ONE,
            |g, i| {
                use crate::types::Dim::Known as K;
                op1(
                    g,
                    Op::SumTo {
                        shape: vec![K(2), K(3)],
                    },
                    i[0],
                )
            },
        ),
        by_op(
            "matmul-fold-transpose-a",
            "matmul",
            |eg, n| {
                let Op::MatMul { ta: false, tb } = n.op else {
                    return None;
                };
                let t = find(eg, n.args[0], "transpose")?;
                let Op::Transpose { perm } = &t.op else {
                    return None;
                };
                is_swap_last2(perm)
                    .then(|| add(eg, Op::MatMul { ta: true, tb }, &[t.args[0], n.args[1]]))
            },
            &[&[3, 2], &[3, 4]],
            |g, i| {
                let t = op1(g, Op::Transpose { perm: vec![1, 0] }, i[0]);
                op2(
                    g,
                    Op::MatMul {
                        ta: false,
                        tb: false,
                    },
                    t,
                    i[1],
                )
            },
        ),
        by_op(
            "matmul-fold-transpose-b",
            "matmul",
            |eg, n| {
                let Op::MatMul { ta, tb: false } = n.op else {
                    return None;
                };
                let t = find(eg, n.args[1], "transpose")?;
                let Op::Transpose { perm } = &t.op else {
                    return None;
                };
                is_swap_last2(perm)
                    .then(|| add(eg, Op::MatMul { ta, tb: true }, &[n.args[0], t.args[0]]))
            },
            &[&[2, 3], &[4, 3]],
            |g, i| {
                let t = op1(g, Op::Transpose { perm: vec![1, 0] }, i[1]);
                op2(
                    g,
                    Op::MatMul {
                        ta: false,
                        tb: false,
                    },
                    i[0],
                    t,
                )
            },
        ),
    ]
}
