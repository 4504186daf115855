//! Compile-time values of the lowering evaluator.

use crate::ir::NodeId;
use dlc_dsl::ast::{FnDef, ModelDef};
use std::collections::HashMap;
use std::rc::Rc;

/// How a parameter is initialised (drawn by the runtime from the seed and the name).
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    /// Normal(mean, std).
    Normal(f64, f64),
    /// Uniform(lo, hi).
    Uniform(f64, f64),
    /// Glorot/Xavier uniform: U(±sqrt(6 / (fan_in + fan_out))).
    Glorot,
    /// He normal: N(0, sqrt(2 / fan_in)).
    He,
    /// LeCun normal: N(0, sqrt(1 / fan_in)).
    Lecun,
    /// The identity matrix (square 2-D parameters).
    Identity,
}

/// Optimizers of the course, with their hyper-parameters (DESIGN §3 defaults).
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    Sgd {
        lr: f64,
    },
    Momentum {
        lr: f64,
        beta: f64,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Adagrad {
        lr: f64,
        eps: f64,
    },
    Adadelta {
        lr: f64,
        rho: f64,
        eps: f64,
    },
    RmsProp {
        lr: f64,
        rho: f64,
        eps: f64,
    },
}

impl Optimizer {
    pub const NAMES: [&'static str; 6] =
        ["sgd", "momentum", "adam", "adagrad", "adadelta", "rmsprop"];

    /// The optimizer with its default hyper-parameters, and `lr` if given.
    pub fn with_defaults(name: &str, lr: Option<f64>) -> Option<Optimizer> {
        let o = match name {
            "sgd" => Optimizer::Sgd { lr: 0.1 },
            "momentum" => Optimizer::Momentum {
                lr: 0.01,
                beta: 0.9,
            },
            "adam" => Optimizer::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-7,
            },
            "adagrad" => Optimizer::Adagrad {
                lr: 0.01,
                eps: 1e-7,
            },
            "adadelta" => Optimizer::Adadelta {
                lr: 1.0,
                rho: 0.95,
                eps: 1e-6,
            },
            "rmsprop" => Optimizer::RmsProp {
                lr: 1e-3,
                rho: 0.9,
                eps: 1e-7,
            },
            _ => return None,
        };
        Some(match lr {
            Some(lr) => o.set_lr(lr),
            None => o,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Momentum { .. } => "momentum",
            Optimizer::Adam { .. } => "adam",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::Adadelta { .. } => "adadelta",
            Optimizer::RmsProp { .. } => "rmsprop",
        }
    }

    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr }
            | Optimizer::Momentum { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Adadelta { lr, .. }
            | Optimizer::RmsProp { lr, .. } => lr,
        }
    }

    pub fn set_lr(mut self, new: f64) -> Optimizer {
        match &mut self {
            Optimizer::Sgd { lr }
            | Optimizer::Momentum { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Adadelta { lr, .. }
            | Optimizer::RmsProp { lr, .. } => *lr = new,
        }
        self
    }
}

/// A callable value.
#[derive(Clone, Debug)]
pub enum Func {
    Builtin(&'static str),
    /// A top-level `fn`.
    Global(Rc<FnDef>),
    /// A model definition: calling it instantiates the model (as a member binding).
    Model(Rc<ModelDef>),
    /// A function of a model instance (`dense1.forward`, or calling `dense1` itself).
    Method(Rc<Instance>, Rc<FnDef>),
}

/// A model instantiated with arguments: its parameters exist in the graph.
#[derive(Debug)]
pub struct Instance {
    pub def: Rc<ModelDef>,
    /// Dotted path of this instance (`""` for the trained model, `dense1`, `enc.dense1`).
    pub path: String,
    pub env: HashMap<String, Value>,
}

/// A square sparse matrix of `size` rows in CSR form: three graph values.
#[derive(Clone, Debug)]
pub struct Sparse {
    pub indptr: NodeId,
    pub indices: NodeId,
    pub values: NodeId,
    pub size: crate::types::Dim,
}

#[derive(Clone, Debug)]
pub enum Value {
    Tensor(NodeId),
    Num(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Init(Init),
    Optimizer(Optimizer),
    Func(Func),
    Instance(Rc<Instance>),
    /// A square sparse matrix (a data set's graph): its CSR arrays as graph values and its
    /// size. `adj @ h` is its product with a dense matrix.
    Sparse(Rc<Sparse>),
    /// The result of an expression that already reported an error.
    Poison,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Tensor(_) => "a tensor",
            Value::Num(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Init(_) => "an initialiser",
            Value::Optimizer(_) => "an optimizer",
            Value::Func(_) => "a function",
            Value::Instance(_) => "a model instance",
            Value::Sparse(_) => "a sparse matrix",
            Value::Poison => "an erroneous value",
        }
    }
}
