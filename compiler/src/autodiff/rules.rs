//! VJP rules: how the gradient flows through each op, as named egg rewrites.
//!
//! A placeholder `vjp_i(node, g)` stands for "the gradient reaching input i of `node`
//! when `node`'s adjoint is `g`". Each rule rewrites one placeholder into primitive ops.
//! Broadcasting is undone centrally by the walk (`sum_to`), so elementwise rules return
//! gradients of the output's shape. Ops whose inputs receive no gradient are listed in
//! [`no_gradient`]; every other op must have a rule for each input, or the `grad` phase
//! reports it.

use super::lang::{EGraph, ENode};
use crate::ops::Op;
use crate::types::{Dim, Shape, Type};
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};

pub type Rule = Rewrite<ENode, super::lang::Types>;

/// Whether input `i` of `op` never receives a gradient (the op is piecewise constant in
/// it, or it is an index, or gradients are blocked on purpose).
pub fn no_gradient(op: &Op, i: usize) -> bool {
    use Op::*;
    match op {
        Input { .. } | Param { .. } | State { .. } | Const { .. } | Random { .. } => true,
        Sign | StopGradient | Cast(_) | ArgMax { .. } | OneHot { .. } => true,
        Lt | Le | Gt | Ge | Eq | Ne => true,
        Select => i == 0,
        Gather => i == 1,
        SpMM | SpMMT => i < 3,
        Knn { .. } => true,
        GatherPoints => i == 1,
        ScatterPoints { .. } => i == 0,
        ScatterAdd { .. } => i == 0,
        Neg | Exp | Log | Sqrt | Tanh | Sigmoid | Relu | Abs => false,
        Add | Sub | Mul | Div | Pow | Maximum | Minimum => false,
        Sum { .. } | Mean { .. } | Max { .. } | Softmax { .. } | LogSoftmax { .. } => false,
        Reshape { .. }
        | Transpose { .. }
        | Broadcast { .. }
        | SumTo { .. }
        | Concat { .. }
        | Slice { .. } => false,
        MatMul { .. } => false,
        // Its own rule (a second derivative) is not written: the grad phase reports it.
        ContractLeading => false,
        Conv2d { .. } | MaxPool2d { .. } | AvgPool2d { .. } => false,
        // The window gradients are linear in their last input (and conv2d_back_input in
        // the filter); their own rules (second derivatives) are not written: the grad
        // phase reports the missing rule.
        Conv2dBackInput { .. } | Conv2dBackFilter { .. } | AvgPool2dBack { .. } => false,
        MaxPool2dBack { .. } => i == 0,
        // Differentiated by the walk itself (`autodiff/scan.rs`: the reverse scan).
        Scan { .. } => false,
        // Kernels exist only after optimization, which runs after differentiation.
        Fused { .. } => true,
        Vjp(_) => true,
    }
}

fn pat(s: &str) -> Pattern<ENode> {
    s.parse()
        .unwrap_or_else(|e| panic!("bad rule pattern {s}: {e}"))
}

fn rw(name: &str, lhs: &str, rhs: &str) -> Rule {
    Rewrite::new(name, pat(lhs), pat(rhs)).unwrap_or_else(|e| panic!("bad rule {name}: {e}"))
}

/// A rule for an op with attributes: the applier sees the forward node and builds the
/// gradient with the help of the types in the e-class analysis.
struct Custom {
    op: &'static str,
    build: fn(&mut EGraph, &ENode, Id, Id) -> Option<Id>,
}

impl Applier<ENode, super::lang::Types> for Custom {
    fn apply_one(
        &self,
        eg: &mut EGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let n: Var = "?n".parse().expect("var");
        let g: Var = "?g".parse().expect("var");
        let (nid, gid) = (subst[n], subst[g]);
        let Some(fwd) = eg[nid]
            .nodes
            .iter()
            .find(|e| e.op.name() == self.op)
            .cloned()
        else {
            return vec![];
        };
        match (self.build)(eg, &fwd, nid, gid) {
            Some(id) if eg.union(eclass, id) => vec![eclass],
            _ => vec![],
        }
    }
}

fn custom(
    name: &str,
    i: usize,
    op: &'static str,
    build: fn(&mut EGraph, &ENode, Id, Id) -> Option<Id>,
) -> Rule {
    Rewrite::new(name, pat(&format!("(vjp{i} ?n ?g)")), Custom { op, build })
        .unwrap_or_else(|e| panic!("bad rule {name}: {e}"))
}

fn add(eg: &mut EGraph, op: Op, args: &[Id]) -> Id {
    eg.add(ENode {
        op,
        args: args.to_vec(),
    })
}

fn ty(eg: &EGraph, id: Id) -> Option<Type> {
    eg[id].data.ty.clone()
}

/// The reduced shape with reduced axes kept as 1.
fn keep_shape(s: &Shape, axes: &[usize]) -> Shape {
    s.iter()
        .enumerate()
        .map(|(i, d)| {
            if axes.contains(&i) {
                Dim::Known(1)
            } else {
                d.clone()
            }
        })
        .collect()
}

/// g (the reduced adjoint) broadcast back over the reduced axes.
fn unreduce(eg: &mut EGraph, g: Id, in_shape: &Shape, axes: &[usize], keep: bool) -> Id {
    let g = if keep {
        g
    } else {
        add(
            eg,
            Op::Reshape {
                shape: keep_shape(in_shape, axes),
            },
            &[g],
        )
    };
    add(
        eg,
        Op::Broadcast {
            shape: in_shape.clone(),
        },
        &[g],
    )
}

fn swap_last2(rank: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).collect();
    p.swap(rank - 2, rank - 1);
    p
}

/// Every VJP rule, grouped by the kind of op.
pub fn vjp_rules() -> Vec<Rule> {
    vec![
        // -- elementwise, one input --------------------------------------------
        rw("vjp-neg", "(vjp0 (neg ?x) ?g)", "(neg ?g)"),
        rw("vjp-exp", "(vjp0 (exp ?x) ?g)", "(mul ?g (exp ?x))"),
        rw("vjp-log", "(vjp0 (log ?x) ?g)", "(div ?g ?x)"),
        rw(
            "vjp-sqrt",
            "(vjp0 (sqrt ?x) ?g)",
            "(div ?g (mul 2 (sqrt ?x)))",
        ),
        rw(
            "vjp-tanh",
            "(vjp0 (tanh ?x) ?g)",
            "(mul ?g (sub 1 (mul (tanh ?x) (tanh ?x))))",
        ),
        rw(
            "vjp-sigmoid",
            "(vjp0 (sigmoid ?x) ?g)",
            "(mul ?g (mul (sigmoid ?x) (sub 1 (sigmoid ?x))))",
        ),
        // The mask reads the ReLU's output (relu(x) > 0 exactly where x > 0, NaN
        // included): the pre-activation is then not kept for the backward pass.
        rw(
            "vjp-relu",
            "(vjp0 (relu ?x) ?g)",
            "(mul ?g (gt (relu ?x) 0))",
        ),
        rw("vjp-abs", "(vjp0 (abs ?x) ?g)", "(mul ?g (sign ?x))"),
        // -- elementwise, two inputs (output-shaped; the walk sums to the input shape)
        rw("vjp-add-0", "(vjp0 (add ?a ?b) ?g)", "?g"),
        rw("vjp-add-1", "(vjp1 (add ?a ?b) ?g)", "?g"),
        rw("vjp-sub-0", "(vjp0 (sub ?a ?b) ?g)", "?g"),
        rw("vjp-sub-1", "(vjp1 (sub ?a ?b) ?g)", "(neg ?g)"),
        rw("vjp-mul-0", "(vjp0 (mul ?a ?b) ?g)", "(mul ?g ?b)"),
        rw("vjp-mul-1", "(vjp1 (mul ?a ?b) ?g)", "(mul ?g ?a)"),
        rw("vjp-div-0", "(vjp0 (div ?a ?b) ?g)", "(div ?g ?b)"),
        rw(
            "vjp-div-1",
            "(vjp1 (div ?a ?b) ?g)",
            "(neg (div (mul ?g ?a) (mul ?b ?b)))",
        ),
        rw(
            "vjp-pow-0",
            "(vjp0 (pow ?a ?b) ?g)",
            "(mul ?g (mul ?b (pow ?a (sub ?b 1))))",
        ),
        rw(
            "vjp-pow-1",
            "(vjp1 (pow ?a ?b) ?g)",
            "(mul ?g (mul (log ?a) (pow ?a ?b)))",
        ),
        rw(
            "vjp-maximum-0",
            "(vjp0 (maximum ?a ?b) ?g)",
            "(mul ?g (ge ?a ?b))",
        ),
        rw(
            "vjp-maximum-1",
            "(vjp1 (maximum ?a ?b) ?g)",
            "(mul ?g (lt ?a ?b))",
        ),
        rw(
            "vjp-minimum-0",
            "(vjp0 (minimum ?a ?b) ?g)",
            "(mul ?g (le ?a ?b))",
        ),
        rw(
            "vjp-minimum-1",
            "(vjp1 (minimum ?a ?b) ?g)",
            "(mul ?g (gt ?a ?b))",
        ),
        rw(
            "vjp-select-1",
            "(vjp1 (select ?c ?a ?b) ?g)",
            "(select ?c ?g 0)",
        ),
        rw(
            "vjp-select-2",
            "(vjp2 (select ?c ?a ?b) ?g)",
            "(select ?c 0 ?g)",
        ),
        // -- reductions ------------------------------------------------------------
        custom("vjp-sum", 0, "sum", |eg, n, _, g| {
            let Op::Sum { axes, keep } = &n.op else {
                return None;
            };
            let s = ty(eg, n.args[0])?.shape;
            Some(unreduce(eg, g, &s, axes, *keep))
        }),
        custom("vjp-mean", 0, "mean", |eg, n, _, g| {
            let Op::Mean { axes, keep } = &n.op else {
                return None;
            };
            let s = ty(eg, n.args[0])?.shape;
            let gb = unreduce(eg, g, &s, axes, *keep);
            let known: Option<usize> = axes.iter().map(|&a| s[a].known()).product();
            let count = match known {
                Some(k) => add(eg, Op::scalar(k as f64), &[]),
                None => {
                    // A symbolic size (the batch): count it at run time.
                    let one = add(eg, Op::scalar(1.0), &[]);
                    let ones = add(eg, Op::Broadcast { shape: s.clone() }, &[one]);
                    add(
                        eg,
                        Op::Sum {
                            axes: axes.clone(),
                            keep: true,
                        },
                        &[ones],
                    )
                }
            };
            Some(add(eg, Op::Div, &[gb, count]))
        }),
        custom("vjp-max", 0, "max", |eg, n, nid, g| {
            let Op::Max { axes, keep } = &n.op else {
                return None;
            };
            let s = ty(eg, n.args[0])?.shape;
            let gb = unreduce(eg, g, &s, axes, *keep);
            let mb = unreduce(eg, nid, &s, axes, *keep);
            let mask = add(eg, Op::Eq, &[n.args[0], mb]);
            Some(add(eg, Op::Mul, &[gb, mask]))
        }),
        custom("vjp-softmax", 0, "softmax", |eg, n, nid, g| {
            let Op::Softmax { axis } = n.op else {
                return None;
            };
            let gy = add(eg, Op::Mul, &[g, nid]);
            let s = add(
                eg,
                Op::Sum {
                    axes: vec![axis],
                    keep: true,
                },
                &[gy],
            );
            let d = add(eg, Op::Sub, &[g, s]);
            Some(add(eg, Op::Mul, &[nid, d]))
        }),
        custom("vjp-log-softmax", 0, "log_softmax", |eg, n, nid, g| {
            let Op::LogSoftmax { axis } = n.op else {
                return None;
            };
            let p = add(eg, Op::Exp, &[nid]);
            let s = add(
                eg,
                Op::Sum {
                    axes: vec![axis],
                    keep: true,
                },
                &[g],
            );
            let ps = add(eg, Op::Mul, &[p, s]);
            Some(add(eg, Op::Sub, &[g, ps]))
        }),
        // -- layout ----------------------------------------------------------------
        custom("vjp-reshape", 0, "reshape", |eg, n, _, g| {
            let s = ty(eg, n.args[0])?.shape;
            Some(add(eg, Op::Reshape { shape: s }, &[g]))
        }),
        custom("vjp-transpose", 0, "transpose", |eg, n, _, g| {
            let Op::Transpose { perm } = &n.op else {
                return None;
            };
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            Some(add(eg, Op::Transpose { perm: inv }, &[g]))
        }),
        custom("vjp-broadcast", 0, "broadcast", |eg, n, _, g| {
            let s = ty(eg, n.args[0])?.shape;
            Some(add(eg, Op::SumTo { shape: s }, &[g]))
        }),
        custom("vjp-sum-to", 0, "sum_to", |eg, n, _, g| {
            let s = ty(eg, n.args[0])?.shape;
            Some(add(eg, Op::Broadcast { shape: s }, &[g]))
        }),
        custom("vjp-slice", 0, "slice", |eg, n, _, g| {
            let Op::Slice {
                axis,
                start,
                end,
                step: 1,
            } = n.op
            else {
                return None;
            };
            let s = ty(eg, n.args[0])?.shape;
            let total = s[axis].known()?;
            let zero = add(eg, Op::scalar(0.0), &[]);
            let mut parts = Vec::new();
            for (from, to) in [(0, start), (start, end), (end, total)] {
                if to == from {
                    continue;
                }
                if from == start && to == end {
                    parts.push(g);
                } else {
                    let mut zs = s.clone();
                    zs[axis] = Dim::Known(to - from);
                    parts.push(add(eg, Op::Broadcast { shape: zs }, &[zero]));
                }
            }
            Some(if parts.len() == 1 {
                parts[0]
            } else {
                add(eg, Op::Concat { axis }, &parts)
            })
        }),
        // -- contraction -----------------------------------------------------------
        custom("vjp-matmul-0", 0, "matmul", |eg, n, _, g| {
            let Op::MatMul {
                ta: false,
                tb: false,
            } = n.op
            else {
                return None;
            };
            let b = ty(eg, n.args[1])?;
            let bt = add(
                eg,
                Op::Transpose {
                    perm: swap_last2(b.rank()),
                },
                &[n.args[1]],
            );
            Some(add(eg, Op::matmul(), &[g, bt]))
        }),
        custom("vjp-matmul-1", 1, "matmul", |eg, n, _, g| {
            let Op::MatMul {
                ta: false,
                tb: false,
            } = n.op
            else {
                return None;
            };
            let (a, b) = (ty(eg, n.args[0])?, ty(eg, n.args[1])?);
            if a.rank() > 2 && b.rank() == 2 {
                // [L…, K] @ [K, N]: every leading row shared one weight matrix.
                return Some(add(eg, Op::ContractLeading, &[n.args[0], g]));
            }
            let at = add(
                eg,
                Op::Transpose {
                    perm: swap_last2(a.rank()),
                },
                &[n.args[0]],
            );
            Some(add(eg, Op::matmul(), &[at, g]))
        }),
        // -- windows (convolution and pooling) ---------------------------------------
        custom("vjp-conv2d-0", 0, "conv2d", |eg, n, _, g| {
            let Op::Conv2d { geo } = n.op else {
                return None;
            };
            let x = ty(eg, n.args[0])?;
            let input = [x.shape[1].known()?, x.shape[2].known()?];
            Some(add(eg, Op::Conv2dBackInput { geo, input }, &[g, n.args[1]]))
        }),
        custom("vjp-conv2d-1", 1, "conv2d", |eg, n, _, g| {
            let Op::Conv2d { geo } = n.op else {
                return None;
            };
            Some(add(eg, Op::Conv2dBackFilter { geo }, &[n.args[0], g]))
        }),
        custom("vjp-maxpool2d", 0, "maxpool2d", |eg, n, _, g| {
            let Op::MaxPool2d { geo } = n.op else {
                return None;
            };
            Some(add(eg, Op::MaxPool2dBack { geo }, &[n.args[0], g]))
        }),
        custom("vjp-avgpool2d", 0, "avgpool2d", |eg, n, _, g| {
            let Op::AvgPool2d { geo } = n.op else {
                return None;
            };
            let x = ty(eg, n.args[0])?;
            let input = [x.shape[1].known()?, x.shape[2].known()?];
            Some(add(eg, Op::AvgPool2dBack { geo, input }, &[g]))
        }),
        custom("vjp-gather", 0, "gather", |eg, n, _, g| {
            let rows = ty(eg, n.args[0])?.shape[0].known()?;
            Some(add(eg, Op::ScatterAdd { rows }, &[n.args[1], g]))
        }),
        custom("vjp-scatter-add", 1, "scatter_add", |eg, n, _, g| {
            Some(add(eg, Op::Gather, &[g, n.args[0]]))
        }),
        custom("vjp-gather-points", 0, "gather_points", |eg, n, _, g| {
            let points = ty(eg, n.args[0])?.shape[1].known()?;
            Some(add(eg, Op::ScatterPoints { points }, &[n.args[1], g]))
        }),
        custom("vjp-scatter-points", 1, "scatter_points", |eg, n, _, g| {
            Some(add(eg, Op::GatherPoints, &[g, n.args[0]]))
        }),
        // ∂(A·h)/∂h = Aᵀ·g, and back.
        custom("vjp-spmm", 3, "spmm", |eg, n, _, g| {
            let a = &n.args;
            Some(add(eg, Op::SpMMT, &[a[0], a[1], a[2], g]))
        }),
        custom("vjp-spmm-t", 3, "spmm_t", |eg, n, _, g| {
            let a = &n.args;
            Some(add(eg, Op::SpMM, &[a[0], a[1], a[2], g]))
        }),
    ]
    .into_iter()
    .chain(concat_rules())
    .collect()
}

/// concat has one rule per input position (up to 16 inputs).
fn concat_rules() -> Vec<Rule> {
    fn part(eg: &mut EGraph, n: &ENode, g: Id, i: usize) -> Option<Id> {
        let Op::Concat { axis } = n.op else {
            return None;
        };
        let mut start = 0;
        for &a in &n.args[..i] {
            start += ty(eg, a)?.shape[axis].known()?;
        }
        let len = ty(eg, *n.args.get(i)?)?.shape[axis].known()?;
        Some(add(
            eg,
            Op::Slice {
                axis,
                start,
                end: start + len,
                step: 1,
            },
            &[g],
        ))
    }
    macro_rules! concat_rule {
        ($($i:literal)*) => { vec![$(custom(concat!("vjp-concat-", $i), $i, "concat", |eg, n, _, g| part(eg, n, g, $i))),*] };
    }
    concat_rule!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}
