//! The egg language of dlc: one e-node per IR op, mirroring the op table one to one
//! (`ENode { op: Op, args }`), with an e-class analysis carrying each class's type.

use crate::ops::Op;
use crate::types::Type;
use egg::{Analysis, DidMerge, Id, Language};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub op: Op,
    pub args: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = Op;

    fn discriminant(&self) -> Op {
        self.op.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.args.len() == other.args.len()
    }

    fn children(&self) -> &[Id] {
        &self.args
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.args
    }
}

impl fmt::Display for ENode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(v) = self.op.scalar_value() {
            return write!(f, "{v}");
        }
        match &self.op {
            Op::Vjp(i) => write!(f, "vjp{i}"),
            op => {
                let a = op.attrs();
                if a.is_empty() {
                    write!(f, "{}", op.name())
                } else {
                    write!(f, "{}[{a}]", op.name())
                }
            }
        }
    }
}

impl egg::FromOp for ENode {
    type Error = String;

    /// Patterns name attribute-free ops (`mul`, `vjp0`) and scalar constants (`1`).
    fn from_op(op: &str, args: Vec<Id>) -> Result<Self, Self::Error> {
        if let Ok(v) = op.parse::<f64>() {
            return Ok(ENode {
                op: Op::scalar(v),
                args,
            });
        }
        match Op::from_name(op) {
            Some(op) => Ok(ENode { op, args }),
            None => Err(format!("`{op}` is not an op usable in a pattern")),
        }
    }
}

pub type EGraph = egg::EGraph<ENode, Types>;

/// What the analysis knows about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// The type, from the op table's shape rules.
    pub ty: Option<Type>,
    /// The value, when the class is a scalar constant (constant folding).
    pub konst: Option<f64>,
}

/// E-class analysis: the type of every class (from the op table's shape rules) and the
/// value of scalar constants, folded through elementwise ops.
#[derive(Default, Clone)]
pub struct Types {
    /// Add each known constant to its class (constant folding). Off in the `grad`
    /// phase, so that `--emit grad` shows the gradient exactly as the rules wrote it.
    pub fold: bool,
}

/// Fold one elementwise op over scalar constants, with the interpreter's semantics.
fn fold(op: &Op, args: &[f64]) -> Option<f64> {
    let nan_max = |a: f64, b: f64| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    };
    let nan_min = |a: f64, b: f64| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        }
    };
    Some(match (op, args) {
        (Op::Neg, [a]) => -a,
        (Op::Exp, [a]) => a.exp(),
        (Op::Log, [a]) => a.ln(),
        (Op::Sqrt, [a]) => a.sqrt(),
        (Op::Tanh, [a]) => a.tanh(),
        (Op::Add, [a, b]) => a + b,
        (Op::Sub, [a, b]) => a - b,
        (Op::Mul, [a, b]) => a * b,
        (Op::Div, [a, b]) => a / b,
        (Op::Pow, [a, b]) => a.powf(*b),
        (Op::Maximum, [a, b]) => nan_max(*a, *b),
        (Op::Minimum, [a, b]) => nan_min(*a, *b),
        _ => return None,
    })
}

impl Analysis<ENode> for Types {
    type Data = Info;

    fn make(egraph: &mut EGraph, enode: &ENode, _id: Id) -> Info {
        if let Op::Vjp(i) = enode.op {
            // vjp_i(node, g) has the type of the node's input i.
            let node_class = &egraph[enode.args[0]];
            let ty = node_class
                .nodes
                .iter()
                .find(|n| !matches!(n.op, Op::Vjp(_)))
                .and_then(|fwd| fwd.args.get(i))
                .and_then(|a| egraph[*a].data.ty.clone());
            return Info { ty, konst: None };
        }
        let tys: Option<Vec<Type>> = enode
            .args
            .iter()
            .map(|&a| egraph[a].data.ty.clone())
            .collect();
        let ty = tys.and_then(|tys| {
            let refs: Vec<&Type> = tys.iter().collect();
            enode.op.infer(&refs).ok()
        });
        let konst = match enode.op.scalar_value() {
            Some(v) => Some(v),
            None if ty
                .as_ref()
                .is_some_and(|t| t.shape.is_empty() && t.dtype == crate::types::DType::F32) =>
            {
                let vals: Option<Vec<f64>> =
                    enode.args.iter().map(|&a| egraph[a].data.konst).collect();
                vals.and_then(|v| fold(&enode.op, &v))
            }
            None => None,
        };
        Info { ty, konst }
    }

    fn merge(&mut self, to: &mut Info, from: Info) -> DidMerge {
        let mut changed_to = false;
        let mut changed_from = false;
        match (&to.ty, from.ty) {
            (None, Some(f)) => {
                to.ty = Some(f);
                changed_to = true;
            }
            (Some(_), None) => changed_from = true,
            _ => {}
        }
        match (to.konst, from.konst) {
            (None, Some(k)) => {
                to.konst = Some(k);
                changed_to = true;
            }
            (Some(_), None) => changed_from = true,
            _ => {}
        }
        DidMerge(changed_to, changed_from)
    }

    /// A class with a known constant value gets the constant itself as a member.
    fn modify(egraph: &mut EGraph, id: Id) {
        if !egraph.analysis.fold {
            return;
        }
        if let Some(v) = egraph[id].data.konst {
            if !v.is_finite() {
                return;
            }
            let c = egraph.add(ENode {
                op: Op::scalar(v),
                args: vec![],
            });
            egraph.union(id, c);
        }
    }
}
