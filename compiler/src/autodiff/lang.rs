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

/// E-class analysis: the type of every class, from the op table's shape rules.
#[derive(Default, Clone)]
pub struct Types;

impl Analysis<ENode> for Types {
    type Data = Option<Type>;

    fn make(egraph: &mut EGraph, enode: &ENode, _id: Id) -> Self::Data {
        if let Op::Vjp(i) = enode.op {
            // vjp_i(node, g) has the type of the node's input i.
            let node_class = &egraph[enode.args[0]];
            let fwd = node_class
                .nodes
                .iter()
                .find(|n| !matches!(n.op, Op::Vjp(_)))?;
            return egraph[*fwd.args.get(i)?].data.clone();
        }
        let tys: Vec<Type> = enode
            .args
            .iter()
            .map(|&a| egraph[a].data.clone())
            .collect::<Option<_>>()?;
        let refs: Vec<&Type> = tys.iter().collect();
        enode.op.infer(&refs).ok()
    }

    fn merge(&mut self, to: &mut Self::Data, from: Self::Data) -> DidMerge {
        match (to.as_ref(), from) {
            (None, Some(f)) => {
                *to = Some(f);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            _ => DidMerge(false, false),
        }
    }
}
