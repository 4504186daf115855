//! Built-in functions and names of the language: tensor ops, initialisers, optimizers.
//! Each builtin has a signature (parameter names, so arguments may be named) and is
//! lowered to ops of the op table.

use super::eval::{Ctx, Lowerer, Mode};
use super::value::{Func, Init, Optimizer, Value};
use crate::ir::NodeId;
use crate::ops::{Dist, Op};
use crate::types::{DType, Dim, Shape, show_shape};
use dlc_dsl::ast::{Ident, IndexItem, Span};

/// Every builtin name, for "did you mean" suggestions and the language reference.
pub const ALL: &[&str] = &[
    "exp",
    "log",
    "sqrt",
    "tanh",
    "sigmoid",
    "relu",
    "abs",
    "sign",
    "stop_gradient",
    "linear",
    "maximum",
    "minimum",
    "select",
    "clip",
    "sum",
    "mean",
    "max",
    "argmax",
    "softmax",
    "log_softmax",
    "reshape",
    "flatten",
    "transpose",
    "concat",
    "gather",
    "gather_points",
    "knn",
    "one_hot",
    "conv2d",
    "maxpool2d",
    "avgpool2d",
    "float",
    "int",
    "dim",
    "dropout",
    "scan",
    "param",
    "const",
    "zeros",
    "ones",
    "he",
    "glorot",
    "lecun",
    "identity",
    "normal",
    "uniform",
    "constant",
    "sgd",
    "momentum",
    "adam",
    "adagrad",
    "adadelta",
    "rmsprop",
    "true",
    "false",
];

fn signature(name: &str) -> &'static [&'static str] {
    match name {
        "exp" | "log" | "sqrt" | "tanh" | "sigmoid" | "relu" | "abs" | "sign" | "stop_gradient"
        | "linear" | "flatten" | "float" | "int" => &["x"],
        "maximum" | "minimum" => &["a", "b"],
        "select" => &["cond", "a", "b"],
        "clip" => &["x", "lo", "hi"],
        "sum" | "mean" | "max" => &["x", "axis", "keepdims"],
        "argmax" | "softmax" | "log_softmax" => &["x", "axis"],
        "reshape" => &["x", "shape"],
        "transpose" => &["x", "perm"],
        "concat" => &["xs", "axis"],
        "gather" => &["table", "indices"],
        "gather_points" => &["h", "indices"],
        "knn" => &["points", "k"],
        "one_hot" => &["indices", "depth"],
        "conv2d" => &["x", "w", "stride", "padding"],
        "maxpool2d" | "avgpool2d" => &["x", "size", "stride"],
        "dim" => &["x", "axis"],
        "dropout" => &["x", "rate"],
        "scan" => &["f", "xs", "init", "reverse"],
        "param" => &["shape", "init"],
        "const" => &["value"],
        "normal" => &["mean", "std"],
        "uniform" => &["lo", "hi"],
        "constant" => &["value"],
        "sgd" => &["lr"],
        "momentum" => &["lr", "beta"],
        "adam" => &["lr", "beta1", "beta2", "eps"],
        "adagrad" => &["lr", "eps"],
        "adadelta" | "rmsprop" => &["lr", "rho", "eps"],
        _ => &[],
    }
}

/// The value of a builtin name used without a call.
pub fn named_value(name: &str) -> Option<Value> {
    Some(match name {
        "zeros" => Value::Init(Init::Zeros),
        "ones" => Value::Init(Init::Ones),
        "he" => Value::Init(Init::He),
        "glorot" => Value::Init(Init::Glorot),
        "lecun" => Value::Init(Init::Lecun),
        "identity" => Value::Init(Init::Identity),
        _ => {
            let n = ALL.iter().find(|&&n| n == name)?;
            if signature(n).is_empty() {
                return None;
            }
            Value::Func(Func::Builtin(n))
        }
    })
}

struct Args {
    vals: Vec<Option<(Value, Span)>>,
    span: Span,
}

impl Args {
    fn get(&self, i: usize) -> Option<&(Value, Span)> {
        self.vals.get(i).and_then(|v| v.as_ref())
    }
}

impl Lowerer {
    fn need(&mut self, a: &Args, i: usize, what: &str, fname: &str) -> Option<(Value, Span)> {
        match a.get(i) {
            Some(v) => Some(v.clone()),
            None => {
                self.err(a.span, format!("`{fname}` is missing argument `{what}`"));
                None
            }
        }
    }

    fn num(&mut self, v: &(Value, Span)) -> Option<f64> {
        match &v.0 {
            Value::Num(x) => Some(*x),
            Value::Poison => None,
            other => {
                self.err(v.1, format!("expected a number, found {}", other.kind()));
                None
            }
        }
    }

    fn int(&mut self, v: &(Value, Span)) -> Option<i64> {
        let x = self.num(v)?;
        if x.fract() != 0.0 || x.abs() > 1e15 {
            self.err(v.1, format!("expected an integer, found {x}"));
            return None;
        }
        Some(x as i64)
    }

    fn axis(&mut self, v: &(Value, Span), rank: usize) -> Option<usize> {
        let a = self.int(v)?;
        let r = rank as i64;
        if a < -r || a >= r {
            self.err(
                v.1,
                format!("axis {a} is out of range for a rank-{rank} tensor"),
            );
            return None;
        }
        Some(if a < 0 { (a + r) as usize } else { a as usize })
    }

    fn axes(&mut self, v: Option<&(Value, Span)>, rank: usize) -> Option<Vec<usize>> {
        let Some(v) = v else {
            return Some((0..rank).collect());
        };
        let mut out = match &v.0 {
            Value::List(items) | Value::Tuple(items) => {
                let mut out = Vec::new();
                for it in items.clone() {
                    out.push(self.axis(&(it, v.1), rank)?);
                }
                out
            }
            _ => vec![self.axis(v, rank)?],
        };
        out.sort();
        out.dedup();
        Some(out)
    }

    fn boolean(&mut self, v: Option<&(Value, Span)>) -> Option<bool> {
        match v {
            None => Some(false),
            Some((Value::Bool(b), _)) => Some(*b),
            Some((other, s)) => {
                self.err(
                    *s,
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A positive size or stride given as one number (both axes) or a list of two.
    fn pair(&mut self, v: &(Value, Span), what: &str) -> Option<[usize; 2]> {
        let l = self.shape_list(v)?;
        let p = match l[..] {
            [a] => [a, a],
            [a, b] => [a, b],
            _ => {
                self.err(
                    v.1,
                    format!(
                        "{what} is a number or a list of two, found {} numbers",
                        l.len()
                    ),
                );
                return None;
            }
        };
        if p.iter().any(|&d| d <= 0) {
            self.err(v.1, format!("{what} must be positive, found {l:?}"));
            return None;
        }
        Some([p[0] as usize, p[1] as usize])
    }

    fn tensor_arg(&mut self, v: &(Value, Span)) -> Option<NodeId> {
        self.tensor(v.0.clone(), v.1)
    }

    fn shape_list(&mut self, v: &(Value, Span)) -> Option<Vec<i64>> {
        match &v.0 {
            Value::List(items) | Value::Tuple(items) => {
                let mut out = Vec::new();
                for it in items.clone() {
                    out.push(self.int(&(it, v.1))?);
                }
                Some(out)
            }
            Value::Num(_) => Some(vec![self.int(v)?]),
            Value::Poison => None,
            other => {
                self.err(
                    v.1,
                    format!("expected a shape such as [3, 4], found {}", other.kind()),
                );
                None
            }
        }
    }
}

pub(crate) fn call(
    lw: &mut Lowerer,
    name: &'static str,
    args: Vec<(Option<Ident>, Value, Span)>,
    span: Span,
) -> Value {
    let sig = signature(name);
    let names: Vec<Ident> = sig
        .iter()
        .map(|s| Ident {
            name: s.to_string(),
            span,
        })
        .collect();
    let refs: Vec<&Ident> = names.iter().collect();
    let Some(vals) = lw.bind_args(&format!("`{name}`"), &refs, args, span) else {
        return Value::Poison;
    };
    let a = Args { vals, span };
    call_bound(lw, name, &a, span).unwrap_or(Value::Poison)
}

fn call_bound(lw: &mut Lowerer, name: &'static str, a: &Args, span: Span) -> Option<Value> {
    let unary = |op: Op| op;
    let first = |lw: &mut Lowerer, what: &str| -> Option<NodeId> {
        let v = lw.need(a, 0, what, name)?;
        lw.tensor_arg(&v)
    };
    Some(match name {
        "exp" | "log" | "sqrt" | "tanh" | "sigmoid" | "relu" | "abs" | "sign" | "stop_gradient" => {
            let x = first(lw, "x")?;
            let op = Op::from_name(name).expect("unary builtins are op names");
            lw.node(unary(op), &[x], span)
        }
        "linear" => Value::Tensor(first(lw, "x")?),
        "float" | "int" => {
            let x = first(lw, "x")?;
            let t = if name == "float" {
                DType::F32
            } else {
                DType::I32
            };
            if lw.graph.ty(x).dtype == t {
                Value::Tensor(x)
            } else {
                lw.node(Op::Cast(t), &[x], span)
            }
        }
        "maximum" | "minimum" => {
            let x = first(lw, "a")?;
            let b = lw.need(a, 1, "b", name)?;
            let y = lw.tensor_arg(&b)?;
            let op = if name == "maximum" {
                Op::Maximum
            } else {
                Op::Minimum
            };
            lw.node(op, &[x, y], span)
        }
        "clip" => {
            let x = first(lw, "x")?;
            let lo = lw.need(a, 1, "lo", name)?;
            let hi = lw.need(a, 2, "hi", name)?;
            let (lo, hi) = (lw.tensor_arg(&lo)?, lw.tensor_arg(&hi)?);
            let Value::Tensor(m) = lw.node(Op::Maximum, &[x, lo], span) else {
                return None;
            };
            lw.node(Op::Minimum, &[m, hi], span)
        }
        "select" => {
            let c = first(lw, "cond")?;
            let x = lw.need(a, 1, "a", name)?;
            let y = lw.need(a, 2, "b", name)?;
            let (x, y) = (lw.tensor_arg(&x)?, lw.tensor_arg(&y)?);
            lw.node(Op::Select, &[c, x, y], span)
        }
        "sum" | "mean" | "max" => {
            let x = first(lw, "x")?;
            let rank = lw.graph.ty(x).rank();
            let axes = lw.axes(a.get(1), rank)?;
            let keep = lw.boolean(a.get(2))?;
            let op = match name {
                "sum" => Op::Sum { axes, keep },
                "mean" => Op::Mean { axes, keep },
                _ => Op::Max { axes, keep },
            };
            lw.node(op, &[x], span)
        }
        "argmax" | "softmax" | "log_softmax" => {
            let x = first(lw, "x")?;
            let rank = lw.graph.ty(x).rank();
            if rank == 0 {
                return Some(lw.err(span, format!("`{name}` needs a tensor of rank ≥ 1")));
            }
            let axis = match a.get(1) {
                Some(v) => lw.axis(&v.clone(), rank)?,
                None => rank - 1,
            };
            let op = match name {
                "argmax" => Op::ArgMax { axis },
                "softmax" => Op::Softmax { axis },
                _ => Op::LogSoftmax { axis },
            };
            lw.node(op, &[x], span)
        }
        "reshape" => {
            let x = first(lw, "x")?;
            let s = lw.need(a, 1, "shape", name)?;
            let target = lw.shape_list(&s)?;
            let from = lw.graph.ty(x).shape.clone();
            match infer_reshape(&from, &target) {
                Ok(shape) => lw.node(Op::Reshape { shape }, &[x], span),
                Err(e) => lw.err(s.1, e),
            }
        }
        "flatten" => {
            let x = first(lw, "x")?;
            let from = lw.graph.ty(x).shape.clone();
            if from.is_empty() {
                return Some(lw.err(span, "cannot flatten a scalar"));
            }
            let mut n = 1;
            for d in &from[1..] {
                match d {
                    Dim::Known(k) => n *= k,
                    Dim::Sym(s) => {
                        return Some(
                            lw.err(span, format!("cannot flatten the symbolic dimension {s}")),
                        );
                    }
                }
            }
            lw.node(
                Op::Reshape {
                    shape: vec![from[0].clone(), Dim::Known(n)],
                },
                &[x],
                span,
            )
        }
        "transpose" => {
            let x = first(lw, "x")?;
            let rank = lw.graph.ty(x).rank();
            let perm = match a.get(1) {
                Some(p) => {
                    let p = p.clone();
                    let l = lw.shape_list(&p)?;
                    l.into_iter().map(|v| v.max(0) as usize).collect()
                }
                None => (0..rank).rev().collect(),
            };
            lw.node(Op::Transpose { perm }, &[x], span)
        }
        "concat" => {
            let xs = lw.need(a, 0, "xs", name)?;
            let Value::List(items) = xs.0.clone() else {
                return Some(lw.err(
                    xs.1,
                    format!("`concat` takes a list of tensors, found {}", xs.0.kind()),
                ));
            };
            let mut ids = Vec::new();
            for it in items {
                ids.push(lw.tensor(it, xs.1)?);
            }
            if ids.is_empty() {
                return Some(lw.err(xs.1, "`concat` of an empty list"));
            }
            let rank = lw.graph.ty(ids[0]).rank();
            let axis = match a.get(1) {
                Some(v) => lw.axis(&v.clone(), rank)?,
                None => 0,
            };
            lw.node(Op::Concat { axis }, &ids, span)
        }
        "gather" => {
            let t = first(lw, "table")?;
            let i = lw.need(a, 1, "indices", name)?;
            let i = lw.tensor_arg(&i)?;
            lw.node(Op::Gather, &[t, i], span)
        }
        "gather_points" => {
            let h = first(lw, "h")?;
            let i = lw.need(a, 1, "indices", name)?;
            let i = lw.tensor_arg(&i)?;
            lw.node(Op::GatherPoints, &[h, i], span)
        }
        "knn" => {
            let p = first(lw, "points")?;
            let kv = lw.need(a, 1, "k", name)?;
            let k = lw.int(&kv)?;
            if k <= 0 {
                return Some(lw.err(kv.1, "knn needs k ≥ 1 neighbours"));
            }
            lw.node(Op::Knn { k: k as usize }, &[p], span)
        }
        "one_hot" => {
            let i = first(lw, "indices")?;
            let d = lw.need(a, 1, "depth", name)?;
            let depth = lw.int(&d)?;
            if depth <= 0 {
                return Some(lw.err(d.1, "one_hot depth must be positive"));
            }
            lw.node(
                Op::OneHot {
                    depth: depth as usize,
                },
                &[i],
                span,
            )
        }
        "conv2d" => {
            let x = first(lw, "x")?;
            let wv = lw.need(a, 1, "w", name)?;
            let w = lw.tensor_arg(&wv)?;
            let stride = match a.get(2) {
                Some(v) => lw.pair(&v.clone(), "stride")?,
                None => [1, 1],
            };
            let same = match a.get(3) {
                None => false,
                Some((Value::Str(p), _)) if p == "valid" => false,
                Some((Value::Str(p), _)) if p == "same" => true,
                Some((v, s)) => {
                    let found = match v {
                        Value::Str(p) => format!("\"{p}\""),
                        other => other.kind().to_string(),
                    };
                    return Some(lw.err(
                        *s,
                        format!("padding is \"valid\" or \"same\", found {found}"),
                    ));
                }
            };
            let (xt, wt) = (lw.graph.ty(x).clone(), lw.graph.ty(w).clone());
            let size = match (
                wt.rank(),
                wt.shape.first().and_then(|d| d.known()),
                wt.shape.get(1).and_then(|d| d.known()),
            ) {
                (4, Some(kh), Some(kw)) => [kh, kw],
                _ => {
                    return Some(lw.err(
                        span,
                        format!(
                            "conv2d of an input {} with a filter {}: the filter must be [KH, KW, C, F] with known KH and KW",
                            show_shape(&xt.shape),
                            show_shape(&wt.shape)
                        ),
                    ));
                }
            };
            let mut pad = [0; 4];
            if same {
                for axis in 0..2 {
                    let Some(n) = xt.shape.get(axis + 1).and_then(|d| d.known()) else {
                        return Some(lw.err(
                            span,
                            format!(
                                "conv2d: padding \"same\" needs known rows and columns, got an input {}",
                                show_shape(&xt.shape)
                            ),
                        ));
                    };
                    let (lo, hi) = crate::window::same_padding(n, size[axis], stride[axis]);
                    pad[2 * axis] = lo;
                    pad[2 * axis + 1] = hi;
                }
            }
            let geo = crate::window::Geometry { size, stride, pad };
            lw.node(Op::Conv2d { geo }, &[x, w], span)
        }
        "maxpool2d" | "avgpool2d" => {
            let x = first(lw, "x")?;
            let sv = lw.need(a, 1, "size", name)?;
            let size = lw.pair(&sv, "size")?;
            let stride = match a.get(2) {
                Some(v) => lw.pair(&v.clone(), "stride")?,
                None => size,
            };
            let geo = crate::window::Geometry {
                size,
                stride,
                pad: [0; 4],
            };
            let op = if name == "maxpool2d" {
                Op::MaxPool2d { geo }
            } else {
                Op::AvgPool2d { geo }
            };
            lw.node(op, &[x], span)
        }
        "dim" => {
            let x = first(lw, "x")?;
            let rank = lw.graph.ty(x).rank();
            let ax = lw.need(a, 1, "axis", name)?;
            let ax = lw.axis(&ax, rank)?;
            match &lw.graph.ty(x).shape[ax] {
                Dim::Known(n) => Value::Num(*n as f64),
                Dim::Sym(s) => lw.err(
                    span,
                    format!("dimension {ax} is the symbol {s}, not a number known at compile time"),
                ),
            }
        }
        "scan" => {
            let f = lw.need(a, 0, "f", name)?;
            let xs = lw.need(a, 1, "xs", name)?;
            let init = lw.need(a, 2, "init", name)?;
            let reverse = match a.get(3) {
                None => false,
                Some((Value::Bool(b), _)) => *b,
                Some((other, s)) => {
                    let k = other.kind();
                    return Some(lw.err(*s, format!("`reverse` must be true or false, found {k}")));
                }
            };
            return lw.scan(f, xs, init, reverse, span);
        }
        "dropout" => {
            let x = first(lw, "x")?;
            let r = lw.need(a, 1, "rate", name)?;
            let rate = lw.num(&r)?;
            if !(0.0..1.0).contains(&rate) {
                return Some(lw.err(r.1, format!("dropout rate must be in [0, 1), found {rate}")));
            }
            if lw.mode == Mode::Eval || rate == 0.0 {
                return Some(Value::Tensor(x));
            }
            let shape = lw.graph.ty(x).shape.clone();
            let key = lw.fresh_key();
            let u = lw.graph.add_ok(
                Op::Random {
                    key,
                    dist: Dist::Uniform,
                    shape,
                },
                &[],
            );
            let p = lw.graph.scalar(rate);
            let keep = lw.graph.add_ok(Op::Ge, &[u, p]);
            let scale = lw.graph.scalar(1.0 / (1.0 - rate));
            let mask = lw.graph.add_ok(Op::Mul, &[keep, scale]);
            lw.node(Op::Mul, &[x, mask], span)
        }
        "param" => {
            let s = lw.need(a, 0, "shape", name)?;
            let shape = lw.shape_list(&s)?;
            if shape.iter().any(|&d| d <= 0) {
                return Some(lw.err(
                    s.1,
                    format!("parameter dimensions must be positive, found {shape:?}"),
                ));
            }
            let init = match a.get(1) {
                None => Init::Glorot,
                Some((Value::Init(i), _)) => i.clone(),
                Some((Value::Num(v), _)) => Init::Constant(*v),
                Some((other, s)) => {
                    return Some(lw.err(
                        *s,
                        format!(
                            "expected an initialiser such as he or normal(0, 0.1), found {}",
                            other.kind()
                        ),
                    ));
                }
            };
            if init == Init::Identity && (shape.len() != 2 || shape[0] != shape[1]) {
                return Some(lw.err(span, "the identity initialiser needs a square matrix"));
            }
            lw.new_param(shape.into_iter().map(|d| d as usize).collect(), init, span)
        }
        "const" => {
            let v = lw.need(a, 0, "value", name)?;
            let mut shape = Vec::new();
            let mut data = Vec::new();
            if let Err(e) = literal(&v.0, 0, &mut shape, &mut data) {
                return Some(lw.err(v.1, e));
            }
            lw.constant(shape, data, span)
        }
        "normal" | "uniform" => {
            let p = lw.need(a, 0, sig_name(name, 0), name)?;
            let q = lw.need(a, 1, sig_name(name, 1), name)?;
            let (x, y) = (lw.num(&p)?, lw.num(&q)?);
            Value::Init(if name == "normal" {
                Init::Normal(x, y)
            } else {
                Init::Uniform(x, y)
            })
        }
        "constant" => {
            let p = lw.need(a, 0, "value", name)?;
            Value::Init(Init::Constant(lw.num(&p)?))
        }
        "sgd" | "momentum" | "adam" | "adagrad" | "adadelta" | "rmsprop" => {
            let mut o = Optimizer::with_defaults(name, None).expect("optimizer names");
            let mut vals = Vec::new();
            for i in 0..signature(name).len() {
                vals.push(match a.get(i) {
                    Some(v) => Some(lw.num(&v.clone())?),
                    None => None,
                });
            }
            let set = |slot: &mut f64, v: Option<f64>| {
                if let Some(v) = v {
                    *slot = v;
                }
            };
            match &mut o {
                Optimizer::Sgd { lr } => set(lr, vals[0]),
                Optimizer::Momentum { lr, beta } => {
                    set(lr, vals[0]);
                    set(beta, vals[1]);
                }
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => {
                    set(lr, vals[0]);
                    set(beta1, vals[1]);
                    set(beta2, vals[2]);
                    set(eps, vals[3]);
                }
                Optimizer::Adagrad { lr, eps } => {
                    set(lr, vals[0]);
                    set(eps, vals[1]);
                }
                Optimizer::Adadelta { lr, rho, eps } | Optimizer::RmsProp { lr, rho, eps } => {
                    set(lr, vals[0]);
                    set(rho, vals[1]);
                    set(eps, vals[2]);
                }
            }
            Value::Optimizer(o)
        }
        _ => lw.err(span, format!("`{name}` cannot be called")),
    })
}

fn sig_name(name: &str, i: usize) -> &'static str {
    signature(name)[i]
}

/// Flatten a nested list literal into a shape and row-major data.
fn literal(
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    data: &mut Vec<f64>,
) -> Result<(), String> {
    match v {
        Value::Num(x) => {
            if depth != shape.len() {
                return Err("ragged tensor literal: rows have different depths".into());
            }
            data.push(*x);
            Ok(())
        }
        Value::List(items) => {
            if items.is_empty() {
                return Err("empty list in a tensor literal".into());
            }
            if depth == shape.len() {
                if !data.is_empty() {
                    return Err("ragged tensor literal: rows have different depths".into());
                }
                shape.push(items.len());
            } else if shape[depth] != items.len() {
                return Err(format!(
                    "ragged tensor literal: a row of {} where {} were expected",
                    items.len(),
                    shape[depth]
                ));
            }
            items
                .iter()
                .try_for_each(|it| literal(it, depth + 1, shape, data))
        }
        other => Err(format!(
            "a tensor literal holds numbers, found {}",
            other.kind()
        )),
    }
}

/// Resolve a reshape target with at most one -1, keeping symbolic dimensions.
fn infer_reshape(from: &[Dim], target: &[i64]) -> Result<Shape, String> {
    let known: usize = from.iter().filter_map(|d| d.known()).product();
    let syms: Vec<Dim> = from
        .iter()
        .filter(|d| d.known().is_none())
        .cloned()
        .collect();
    let holes = target.iter().filter(|&&d| d == -1).count();
    if holes > 1 || target.iter().any(|&d| d < -1) {
        return Err(format!(
            "bad reshape target {target:?}: use non-negative sizes and at most one -1"
        ));
    }
    let fixed: usize = target
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let mut out = Vec::new();
    for &d in target {
        if d >= 0 {
            out.push(Dim::Known(d as usize));
            continue;
        }
        if syms.len() == 1 && fixed == known {
            out.push(syms[0].clone());
        } else if syms.is_empty() && fixed > 0 && known.is_multiple_of(fixed) {
            out.push(Dim::Known(known / fixed));
        } else {
            return Err(format!(
                "cannot reshape {} into {target:?}",
                show_shape(from)
            ));
        }
    }
    if holes == 0 && !syms.is_empty() {
        return Err(format!(
            "cannot reshape {} (symbolic size) into {target:?}; use -1 for the symbolic part",
            show_shape(from)
        ));
    }
    Ok(out)
}

/// `x[…]`: slicing and indexing a tensor, or a shape constructor `zeros[B, 10]`, `normal[B, 100]`.
pub(crate) fn index(
    lw: &mut Lowerer,
    base: Value,
    items: &[IndexItem],
    cx: &Ctx,
    span: Span,
) -> Value {
    let dist = match &base {
        Value::Init(_) => None,
        Value::Func(Func::Builtin("normal")) => Some(Init::Normal(0.0, 1.0)),
        Value::Func(Func::Builtin("uniform")) => Some(Init::Uniform(0.0, 1.0)),
        _ => None,
    };
    if let Value::Init(init) = &base {
        return construct(lw, init.clone(), items, cx, span);
    }
    if let Some(init) = dist {
        return construct(lw, init, items, cx, span);
    }
    match base {
        Value::Poison => Value::Poison,
        Value::List(vs) | Value::Tuple(vs) => {
            let [IndexItem::Expr(e)] = items else {
                return lw.err(span, "a list takes one index");
            };
            let i = lw.eval(e, cx);
            let Some(i) = lw.int(&(i, e.span)) else {
                return Value::Poison;
            };
            let n = vs.len() as i64;
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                return lw.err(
                    e.span,
                    format!("index {i} is out of range for a list of {n}"),
                );
            }
            vs[j as usize].clone()
        }
        Value::Tensor(x) => slice_tensor(lw, x, items, cx, span),
        other => lw.err(span, format!("{} cannot be indexed", other.kind())),
    }
}

fn construct(lw: &mut Lowerer, init: Init, items: &[IndexItem], cx: &Ctx, span: Span) -> Value {
    let mut shape = Vec::new();
    for it in items {
        let IndexItem::Expr(e) = it else {
            return lw.err(span, "a shape takes dimensions, not slices");
        };
        match lw.dim(e, cx) {
            Some(d) => shape.push(d),
            None => return Value::Poison,
        }
    }
    let random = |lw: &mut Lowerer, dist: Dist, shape: Shape| {
        let key = lw.fresh_key();
        lw.graph.add_ok(Op::Random { key, dist, shape }, &[])
    };
    match init {
        Init::Zeros => lw.fill(0.0, shape, span),
        Init::Ones => lw.fill(1.0, shape, span),
        Init::Constant(v) => lw.fill(v, shape, span),
        Init::Normal(m, s) => {
            let r = random(lw, Dist::Normal, shape);
            affine(lw, r, s, m)
        }
        Init::Uniform(lo, hi) => {
            let r = random(lw, Dist::Uniform, shape);
            affine(lw, r, hi - lo, lo)
        }
        other => lw.err(
            span,
            format!("{other:?} initialisation needs a parameter; use param([..], init: ..)"),
        ),
    }
}

fn affine(lw: &mut Lowerer, x: NodeId, scale: f64, shift: f64) -> Value {
    let mut y = x;
    if scale != 1.0 {
        let s = lw.graph.scalar(scale);
        y = lw.graph.add_ok(Op::Mul, &[y, s]);
    }
    if shift != 0.0 {
        let s = lw.graph.scalar(shift);
        y = lw.graph.add_ok(Op::Add, &[y, s]);
    }
    Value::Tensor(y)
}

fn slice_tensor(lw: &mut Lowerer, x: NodeId, items: &[IndexItem], cx: &Ctx, span: Span) -> Value {
    let shape = lw.graph.ty(x).shape.clone();
    if items.len() > shape.len() {
        return lw.err(
            span,
            format!(
                "{} indices for a tensor of shape {}",
                items.len(),
                show_shape(&shape)
            ),
        );
    }
    let mut cur = x;
    let mut dropped = Vec::new();
    for (axis, it) in items.iter().enumerate() {
        let size = shape[axis].known();
        let norm = |v: i64, n: usize| -> i64 { if v < 0 { v + n as i64 } else { v } };
        let (start, end, step, drop) = match it {
            IndexItem::Expr(e) => {
                let v = lw.eval(e, cx);
                let Some(i) = lw.int(&(v, e.span)) else {
                    return Value::Poison;
                };
                let Some(n) = size else {
                    return lw.err(e.span, format!("cannot index the symbolic axis {axis}"));
                };
                let j = norm(i, n);
                if j < 0 || j >= n as i64 {
                    return lw.err(
                        e.span,
                        format!("index {i} is out of range for axis {axis} of size {n}"),
                    );
                }
                (j as usize, j as usize + 1, 1, true)
            }
            IndexItem::Slice {
                start,
                end,
                step,
                span: sspan,
            } => {
                if start.is_none() && end.is_none() && step.is_none() {
                    continue;
                }
                let Some(n) = size else {
                    return lw.err(*sspan, format!("cannot slice the symbolic axis {axis}"));
                };
                let mut bound = |e: &Option<dlc_dsl::ast::Expr>, dflt: i64| -> Option<i64> {
                    match e {
                        None => Some(dflt),
                        Some(e) => {
                            let v = lw.eval(e, cx);
                            lw.int(&(v, e.span))
                        }
                    }
                };
                let (Some(s), Some(t), Some(k)) =
                    (bound(start, 0), bound(end, n as i64), bound(step, 1))
                else {
                    return Value::Poison;
                };
                if k <= 0 {
                    return lw.err(*sspan, "slice step must be positive");
                }
                let s = norm(s, n).clamp(0, n as i64) as usize;
                let t = norm(t, n).clamp(0, n as i64) as usize;
                (s, t.max(s), k as usize, false)
            }
        };
        if drop {
            dropped.push(axis);
        }
        let Value::Tensor(y) = lw.node(
            Op::Slice {
                axis,
                start,
                end,
                step,
            },
            &[cur],
            span,
        ) else {
            return Value::Poison;
        };
        cur = y;
    }
    if !dropped.is_empty() {
        let s: Shape = lw
            .graph
            .ty(cur)
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
            .map(|(_, d)| d.clone())
            .collect();
        return lw.node(Op::Reshape { shape: s }, &[cur], span);
    }
    Value::Tensor(cur)
}
