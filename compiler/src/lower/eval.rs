//! The lowering evaluator: walks the AST of the functions and models a training section
//! uses, evaluating compile-time values (numbers, shapes, initialisers, instances) and
//! emitting IR nodes for tensor expressions. Every error is recorded with its span and
//! evaluation goes on with a poison value, so one run reports all errors it meets.

use super::value::{Func, Init, Instance, Value};
use crate::ir::{Graph, NodeId};
use crate::ops::{F64, Op};
use crate::types::{DType, Dim, Shape, Type};
use dlc_dsl::ast::*;
use dlc_dsl::{Diagnostic, nearest};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Training mode lowers dropout to a random mask; evaluation mode to the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// A parameter the runtime must create and initialise.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Deepest chain of calls (user functions and model instantiations).
pub const MAX_CALL_DEPTH: usize = 64;

pub(crate) type Scope = HashMap<String, Value>;

pub struct Lowerer {
    pub graph: Graph,
    pub diags: Vec<Diagnostic>,
    pub params: Vec<ParamInfo>,
    pub mode: Mode,
    pub(crate) globals: HashMap<String, Value>,
    /// Dotted name for the `param(...)` or instantiation a member binding makes.
    pub(crate) binding_path: Option<String>,
    next_key: u32,
    call_depth: usize,
    /// Calls already lowered, by (instance path, function, tensor arguments): calling a
    /// function twice on the same tensors gives the same nodes, dropout mask included.
    memo: HashMap<(String, String, Vec<NodeId>), Value>,
    /// Spans in the user's file of the calls being lowered, innermost last.
    user_sites: Vec<Span>,
    /// Prelude functions and models being lowered, innermost last.
    prelude_fns: Vec<String>,
    reported: HashSet<(usize, usize, String)>,
}

pub(crate) struct Ctx<'a> {
    pub scope: &'a Scope,
    pub inst: Option<&'a Rc<Instance>>,
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl Lowerer {
    pub fn new(globals: HashMap<String, Value>, mode: Mode) -> Lowerer {
        Lowerer {
            graph: Graph::new(),
            diags: Vec::new(),
            params: Vec::new(),
            mode,
            globals,
            binding_path: None,
            next_key: 0,
            call_depth: 0,
            memo: HashMap::new(),
            user_sites: Vec::new(),
            prelude_fns: Vec::new(),
            reported: HashSet::new(),
        }
    }

    /// Record an error (once per span and message) and return poison. An error inside
    /// the prelude is reported at the user's call that led there.
    pub fn err(&mut self, span: Span, msg: impl Into<String>) -> Value {
        let mut msg = msg.into();
        let mut span = span;
        if span.start >= dlc_dsl::PRELUDE_BASE {
            span = self.user_sites.last().copied().unwrap_or_default();
            if let Some(f) = self.prelude_fns.iter().rev().find(|f| !f.is_empty()) {
                msg = format!("{msg} (inside `{f}` from the prelude)");
            }
        }
        if self.reported.insert((span.start, span.end, msg.clone())) {
            self.diags.push(Diagnostic::new(span, msg));
        }
        Value::Poison
    }

    pub(crate) fn fresh_key(&mut self) -> u32 {
        self.next_key += 1;
        self.next_key
    }

    /// Add a node; a shape-rule failure becomes a diagnostic at `span`.
    pub fn node(&mut self, op: Op, ins: &[NodeId], span: Span) -> Value {
        match self.graph.add(op, ins) {
            Ok(n) => Value::Tensor(n),
            Err(e) => self.err(span, e),
        }
    }

    pub(crate) fn lookup(&mut self, name: &str, cx: &Ctx, span: Span) -> Value {
        if let Some(v) = cx.scope.get(name) {
            return v.clone();
        }
        if let Some(inst) = cx.inst {
            if let Some(v) = inst.env.get(name) {
                return v.clone();
            }
            if let Some(f) = inst.def.fns.iter().find(|f| f.name.name == name) {
                return Value::Func(Func::Method(inst.clone(), Rc::new(f.clone())));
            }
        }
        if let Some(v) = self.globals.get(name) {
            return v.clone();
        }
        if let Some(v) = super::builtins::named_value(name) {
            return v;
        }
        let mut known: Vec<String> = cx.scope.keys().cloned().collect();
        if let Some(inst) = cx.inst {
            known.extend(inst.env.keys().cloned());
            known.extend(inst.def.fns.iter().map(|f| f.name.name.clone()));
        }
        known.extend(self.globals.keys().cloned());
        known.extend(super::builtins::ALL.iter().map(|s| s.to_string()));
        let msg = match nearest(name, known.iter().map(|s| s.as_str())) {
            Some(s) => format!("unknown name `{name}`; did you mean `{s}`?"),
            None => format!("unknown name `{name}`"),
        };
        self.err(span, msg)
    }

    /// Lower an expression; the nodes it makes have its place in the user's file (inside
    /// the prelude or an imported file: the user's call that led there).
    pub(crate) fn eval(&mut self, e: &Expr, cx: &Ctx) -> Value {
        let site = if e.span.start >= dlc_dsl::PRELUDE_BASE {
            self.user_sites.last().copied()
        } else {
            Some(e.span)
        };
        let outer = std::mem::replace(&mut self.graph.at, site);
        let v = self.eval_kind(e, cx);
        self.graph.at = outer;
        v
    }

    fn eval_kind(&mut self, e: &Expr, cx: &Ctx) -> Value {
        match &e.kind {
            ExprKind::Number(v) => Value::Num(*v),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Name(n) => match n.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => self.lookup(n, cx, e.span),
            },
            ExprKind::List(items) => Value::List(items.iter().map(|i| self.eval(i, cx)).collect()),
            ExprKind::Tuple(items) => {
                Value::Tuple(items.iter().map(|i| self.eval(i, cx)).collect())
            }
            ExprKind::Neg(x) => {
                let v = self.eval(x, cx);
                match v {
                    Value::Num(n) => Value::Num(-n),
                    Value::Poison => Value::Poison,
                    other => match self.tensor(other, x.span) {
                        Some(n) => self.node(Op::Neg, &[n], e.span),
                        None => Value::Poison,
                    },
                }
            }
            ExprKind::Binary(op, a, b) => {
                let va = self.eval(a, cx);
                let vb = self.eval(b, cx);
                self.binary(*op, va, vb, a.span, b.span, e.span)
            }
            ExprKind::Call(f, args) => {
                let callee = self.eval(f, cx);
                let args: Vec<(Option<Ident>, Value, Span)> = args
                    .iter()
                    .map(|a| (a.name.clone(), self.eval(&a.value, cx), a.value.span))
                    .collect();
                self.call(callee, args, e.span, f.span)
            }
            ExprKind::If(cond, then, otherwise) => {
                let c = self.eval(cond, cx);
                let chosen = match c {
                    Value::Bool(b) => b,
                    Value::Num(n) => n != 0.0,
                    Value::Poison => return Value::Poison,
                    other => {
                        return self.err(
                            cond.span,
                            format!(
                                "the condition of `if` must be known when compiling (a number, a comparison of numbers, true or false), found {}; to choose between tensors element by element use select(cond, a, b)",
                                other.kind()
                            ),
                        );
                    }
                };
                let mut scope = cx.scope.clone();
                self.block(if chosen { then } else { otherwise }, &mut scope, cx.inst)
            }
            ExprKind::Index(base, items) => {
                let v = self.eval(base, cx);
                super::builtins::index(self, v, items, cx, e.span)
            }
            ExprKind::Field(base, field) => {
                let v = self.eval(base, cx);
                match v {
                    Value::Instance(inst) => {
                        let sub = Ctx {
                            scope: &Scope::new(),
                            inst: Some(&inst),
                        };
                        if inst.env.contains_key(&field.name)
                            || inst.def.fns.iter().any(|f| f.name.name == field.name)
                        {
                            self.lookup(&field.name, &sub, field.span)
                        } else {
                            let names: Vec<String> = inst
                                .env
                                .keys()
                                .cloned()
                                .chain(inst.def.fns.iter().map(|f| f.name.name.clone()))
                                .collect();
                            let hint = nearest(&field.name, names.iter().map(|s| s.as_str()))
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.err(
                                field.span,
                                format!(
                                    "`{}` has no member `{}`{hint}",
                                    inst.def.name.name, field.name
                                ),
                            )
                        }
                    }
                    Value::Poison => Value::Poison,
                    other => self.err(
                        field.span,
                        format!("{} has no member `{}`", other.kind(), field.name),
                    ),
                }
            }
        }
    }

    /// A value used as a tensor: numbers become scalar constants.
    pub fn tensor(&mut self, v: Value, span: Span) -> Option<NodeId> {
        match v {
            Value::Tensor(n) => Some(n),
            Value::Num(x) => Some(self.graph.scalar(x)),
            Value::Bool(b) => Some(self.graph.scalar(if b { 1.0 } else { 0.0 })),
            Value::Poison => None,
            other => {
                self.err(span, format!("expected a tensor, found {}", other.kind()));
                None
            }
        }
    }

    /// Make two operands agree on dtype: a scalar constant takes the other's dtype.
    fn unify(&mut self, a: NodeId, b: NodeId) -> (NodeId, NodeId) {
        let (ta, tb) = (self.graph.ty(a).dtype, self.graph.ty(b).dtype);
        if ta == tb {
            return (a, b);
        }
        let is_const = |g: &Graph, n: NodeId| matches!(g.node(n).op, Op::Const { .. });
        if is_const(&self.graph, a) {
            (self.graph.add_ok(Op::Cast(tb), &[a]), b)
        } else if is_const(&self.graph, b) {
            (a, self.graph.add_ok(Op::Cast(ta), &[b]))
        } else {
            (a, b)
        }
    }

    fn binary(&mut self, op: BinOp, a: Value, b: Value, sa: Span, sb: Span, span: Span) -> Value {
        if let (Value::Num(x), Value::Num(y)) = (&a, &b) {
            let (x, y) = (*x, *y);
            return match op {
                BinOp::Add => Value::Num(x + y),
                BinOp::Sub => Value::Num(x - y),
                BinOp::Mul => Value::Num(x * y),
                BinOp::Div => Value::Num(x / y),
                BinOp::Pow => Value::Num(x.powf(y)),
                BinOp::Lt => Value::Bool(x < y),
                BinOp::Le => Value::Bool(x <= y),
                BinOp::Gt => Value::Bool(x > y),
                BinOp::Ge => Value::Bool(x >= y),
                BinOp::Eq => Value::Bool(x == y),
                BinOp::Ne => Value::Bool(x != y),
                BinOp::MatMul => self.err(span, "`@` needs tensors, found two numbers"),
            };
        }
        if matches!(a, Value::Poison) || matches!(b, Value::Poison) {
            return Value::Poison;
        }
        if let (BinOp::MatMul, Value::Sparse(m)) = (op, &a) {
            let Some(h) = self.tensor(b, sb) else {
                return Value::Poison;
            };
            let t = self.graph.ty(h).clone();
            if t.rank() != 2 || t.shape[0] != m.size {
                return self.err(
                    span,
                    format!(
                        "a sparse [{0}, {0}] matrix times {t}: `@` needs an f32 matrix of {0} rows",
                        m.size
                    ),
                );
            }
            return self.node(Op::SpMM, &[m.indptr, m.indices, m.values, h], span);
        }
        if matches!(b, Value::Sparse(_)) || matches!(a, Value::Sparse(_)) {
            return self.err(
                span,
                "a sparse matrix only multiplies a dense matrix on its right: `adj @ h`",
            );
        }
        let (Some(na), Some(nb)) = (self.tensor(a, sa), self.tensor(b, sb)) else {
            return Value::Poison;
        };
        let (na, nb) = self.unify(na, nb);
        let iop = match op {
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            BinOp::Div => Op::Div,
            BinOp::Pow => Op::Pow,
            BinOp::MatMul => Op::matmul(),
            BinOp::Lt => Op::Lt,
            BinOp::Le => Op::Le,
            BinOp::Gt => Op::Gt,
            BinOp::Ge => Op::Ge,
            BinOp::Eq => Op::Eq,
            BinOp::Ne => Op::Ne,
        };
        match self.graph.add(iop, &[na, nb]) {
            Ok(n) => Value::Tensor(n),
            Err(e) => {
                let msg = format!("shape mismatch in `{}`: {e}", op.symbol());
                self.err(span, msg)
            }
        }
    }

    pub(crate) fn call(
        &mut self,
        callee: Value,
        args: Vec<(Option<Ident>, Value, Span)>,
        span: Span,
        fspan: Span,
    ) -> Value {
        if args.iter().any(|(_, v, _)| matches!(v, Value::Poison)) {
            // Still instantiate nothing; the argument already reported its error.
            return Value::Poison;
        }
        match callee {
            Value::Func(Func::Builtin(name)) => super::builtins::call(self, name, args, span),
            Value::Func(Func::Global(f)) => self.call_fn(&f, None, args, span),
            Value::Func(Func::Model(def)) => match self.binding_path.take() {
                Some(path) => self.instantiate(&def, path, args, &HashMap::new(), span),
                None => self.err(
                    fspan,
                    format!(
                        "model `{}` can only be instantiated as a model member (`layer = {}(…)`)",
                        def.name.name, def.name.name
                    ),
                ),
            },
            Value::Func(Func::Method(inst, f)) => self.call_fn(&f, Some(&inst), args, span),
            Value::Instance(inst) => match inst.def.fns.iter().find(|f| f.name.name == "forward") {
                Some(f) => {
                    let f = Rc::new(f.clone());
                    self.call_fn(&f, Some(&inst), args, span)
                }
                None => self.err(
                    fspan,
                    format!("`{}` has no `forward` function to call", inst.def.name.name),
                ),
            },
            Value::Poison => Value::Poison,
            Value::Init(_) => self.err(
                fspan,
                "an initialiser is not a function; use it as `init: …` or `zeros[B, n]`",
            ),
            other => self.err(fspan, format!("{} is not callable", other.kind())),
        }
    }

    /// Enter a call of `what` (defined at `def`) made at `span`.
    fn enter(&mut self, span: Span, what: &str, def: Span) -> bool {
        if self.call_depth >= MAX_CALL_DEPTH {
            self.err(
                span,
                format!(
                    "calls nested deeper than {MAX_CALL_DEPTH} (is a function calling itself?)"
                ),
            );
            return false;
        }
        self.call_depth += 1;
        let site = if span.start >= dlc_dsl::PRELUDE_BASE {
            self.user_sites.last().copied().unwrap_or(span)
        } else {
            span
        };
        self.user_sites.push(site);
        self.prelude_fns
            .push(if def.start >= dlc_dsl::PRELUDE_BASE {
                what.to_string()
            } else {
                String::new()
            });
        true
    }

    fn leave(&mut self) {
        self.call_depth -= 1;
        self.user_sites.pop();
        self.prelude_fns.pop();
    }

    /// Bind arguments to parameter names: positional first, then by name.
    pub(crate) fn bind_args(
        &mut self,
        what: &str,
        names: &[&Ident],
        args: Vec<(Option<Ident>, Value, Span)>,
        span: Span,
    ) -> Option<Vec<Option<(Value, Span)>>> {
        let mut out: Vec<Option<(Value, Span)>> = vec![None; names.len()];
        let mut ok = true;
        let mut pos = 0;
        for (name, v, s) in args {
            let slot = match &name {
                None => {
                    let p = pos;
                    pos += 1;
                    if p >= names.len() {
                        self.err(
                            s,
                            format!("{what} takes {} argument(s), got more", names.len()),
                        );
                        ok = false;
                        continue;
                    }
                    p
                }
                Some(n) => match names.iter().position(|k| k.name == n.name) {
                    Some(p) => p,
                    None => {
                        let hint = nearest(&n.name, names.iter().map(|k| k.name.as_str()))
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_default();
                        self.err(
                            n.span,
                            format!("{what} has no parameter `{}`{hint}", n.name),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            if out[slot].is_some() {
                self.err(
                    s,
                    format!("{what}: parameter `{}` given twice", names[slot].name),
                );
                ok = false;
            }
            out[slot] = Some((v, s));
        }
        let _ = span;
        ok.then_some(out)
    }

    fn call_fn(
        &mut self,
        f: &Rc<FnDef>,
        inst: Option<&Rc<Instance>>,
        args: Vec<(Option<Ident>, Value, Span)>,
        span: Span,
    ) -> Value {
        let what = format!("`{}`", f.name.name);
        let names: Vec<&Ident> = f.params.iter().map(|p| &p.name).collect();
        let tensors: Option<Vec<NodeId>> = args
            .iter()
            .map(|(n, v, _)| match (n, v) {
                (None, Value::Tensor(t)) => Some(*t),
                // A sparse matrix is known by its values' node.
                (None, Value::Sparse(m)) => Some(m.values),
                _ => None,
            })
            .collect();
        let memo_key = tensors.map(|t| {
            (
                inst.map_or_else(|| "#global".to_string(), |i| i.path.clone()),
                f.name.name.clone(),
                t,
            )
        });
        if let Some(v) = memo_key.as_ref().and_then(|k| self.memo.get(k)) {
            return v.clone();
        }
        let Some(bound) = self.bind_args(&what, &names, args, span) else {
            return Value::Poison;
        };
        let full = inst.map_or_else(
            || f.name.name.clone(),
            |i| format!("{}.{}", i.def.name.name, f.name.name),
        );
        if !self.enter(span, &full, f.span) {
            return Value::Poison;
        }
        let empty = Scope::new();
        let mut scope = Scope::new();
        let mut syms: HashMap<String, Dim> = HashMap::new();
        for (p, b) in f.params.iter().zip(bound) {
            let Some((v, vspan)) = b else {
                self.err(
                    span,
                    format!("{what} is missing argument `{}`", p.name.name),
                );
                scope.insert(p.name.name.clone(), Value::Poison);
                continue;
            };
            if let (Some(ty), Value::Tensor(n)) = (&p.ty, &v) {
                let cx = Ctx {
                    scope: &empty,
                    inst,
                };
                if let Some(want) = self.type_expr(ty, &cx) {
                    let got = self.graph.ty(*n).clone();
                    if !type_fits(&want, &got, &mut syms) {
                        self.err(
                            vspan,
                            format!(
                                "argument `{}` of {what} must be {want}, found {got}",
                                p.name.name
                            ),
                        );
                    }
                }
            }
            scope.insert(p.name.name.clone(), v);
        }
        let result = self.block(&f.body, &mut scope, inst);
        if let (Some(ty), Value::Tensor(n)) = (&f.ret, &result) {
            let cx = Ctx {
                scope: &empty,
                inst,
            };
            if let Some(want) = self.type_expr(ty, &cx) {
                let got = self.graph.ty(*n).clone();
                if !type_fits(&want, &got, &mut syms) {
                    self.err(
                        f.body.result.span,
                        format!("{what} must return {want}, but this is {got}"),
                    );
                }
            }
        }
        self.leave();
        if let Some(k) = memo_key {
            self.memo.insert(k, result.clone());
        }
        result
    }

    pub(crate) fn block(
        &mut self,
        b: &Block,
        scope: &mut Scope,
        inst: Option<&Rc<Instance>>,
    ) -> Value {
        for l in &b.lets {
            let v = self.eval(&l.value, &Ctx { scope, inst });
            self.bind_pattern(&l.pattern, v, scope);
        }
        self.eval(&b.result, &Ctx { scope, inst })
    }

    fn bind_pattern(&mut self, p: &Pattern, v: Value, scope: &mut Scope) {
        match p {
            Pattern::Name(n) => {
                scope.insert(n.name.clone(), v);
            }
            Pattern::Tuple(ps, span) => match v {
                Value::Tuple(vs) | Value::List(vs) if vs.len() == ps.len() => {
                    for (p, v) in ps.iter().zip(vs) {
                        self.bind_pattern(p, v, scope);
                    }
                }
                Value::Poison => {
                    for p in ps {
                        self.bind_pattern(p, Value::Poison, scope);
                    }
                }
                other => {
                    self.err(
                        *span,
                        format!("cannot unpack {} into {} names", other.kind(), ps.len()),
                    );
                    for p in ps {
                        self.bind_pattern(p, Value::Poison, scope);
                    }
                }
            },
        }
    }

    /// Evaluate a type such as `f32[B, inputs]`. Unbound capitalised names are symbolic
    /// dimensions; lowercase names must be bound to integers.
    pub(crate) fn type_expr(&mut self, t: &TypeExpr, cx: &Ctx) -> Option<Type> {
        let dtype = match t.dtype.name.as_str() {
            "f32" => DType::F32,
            "i32" => DType::I32,
            other => {
                self.err(
                    t.dtype.span,
                    format!("unknown element type `{other}`; expected f32 or i32"),
                );
                return None;
            }
        };
        let mut shape = Vec::new();
        for d in &t.dims {
            shape.push(self.dim(d, cx)?);
        }
        Some(Type { dtype, shape })
    }

    pub(crate) fn dim(&mut self, d: &Expr, cx: &Ctx) -> Option<Dim> {
        if let ExprKind::Name(n) = &d.kind {
            let bound = cx.scope.contains_key(n)
                || cx.inst.is_some_and(|i| i.env.contains_key(n))
                || self.globals.contains_key(n);
            if !bound && n.starts_with(|c: char| c.is_ascii_uppercase()) {
                return Some(Dim::Sym(n.clone()));
            }
        }
        let v = self.eval(d, cx);
        match v {
            Value::Num(x) if x >= 0.0 && x.fract() == 0.0 => Some(Dim::Known(x as usize)),
            Value::Poison => None,
            other => {
                let shown = match other {
                    Value::Num(x) => format!("{x}"),
                    o => o.kind().to_string(),
                };
                self.err(
                    d.span,
                    format!("a dimension must be a non-negative integer, found {shown}"),
                );
                None
            }
        }
    }

    /// Instantiate a model: bind its parameters, then evaluate its members in order.
    pub fn instantiate(
        &mut self,
        def: &Rc<ModelDef>,
        path: String,
        args: Vec<(Option<Ident>, Value, Span)>,
        dims: &HashMap<String, usize>,
        span: Span,
    ) -> Value {
        let what = format!("model `{}`", def.name.name);
        let names: Vec<&Ident> = def.params.iter().map(|p| &p.name).collect();
        let Some(bound) = self.bind_args(&what, &names, args, span) else {
            return Value::Poison;
        };
        if !self.enter(span, &def.name.name, def.span) {
            return Value::Poison;
        }
        let mut inst = Instance {
            def: def.clone(),
            path: path.clone(),
            env: HashMap::new(),
        };
        for (p, b) in def.params.iter().zip(bound) {
            let v = match b {
                Some((v, _)) => v,
                None => match (&p.default, dims.get(&p.name.name)) {
                    (_, Some(&d)) => Value::Num(d as f64),
                    (Some(e), None) => {
                        let v;
                        (inst, v) = self.eval_making(inst, e);
                        v
                    }
                    (None, None) => self.err(
                        p.name.span,
                        format!(
                            "parameter `{}` of {what} has no value: pass it, give it a default, or train the model on a data set that provides it",
                            p.name.name
                        ),
                    ),
                },
            };
            inst.env.insert(p.name.name.clone(), v);
        }
        for b in &def.bindings {
            self.binding_path = Some(join(&path, &b.name.name));
            let v;
            (inst, v) = self.eval_making(inst, &b.value);
            self.binding_path = None;
            inst.env.insert(b.name.name.clone(), v);
        }
        self.leave();
        Value::Instance(Rc::new(inst))
    }

    /// Evaluate a parameter's default or a member of an instance being made, with its
    /// parameters and earlier members in scope. A value that keeps the instance (one of the
    /// model's functions) is an error (unless one was reported already): the instance is
    /// not made yet.
    fn eval_making(&mut self, inst: Instance, e: &Expr) -> (Instance, Value) {
        let errors = self.diags.len();
        let rc = Rc::new(inst);
        let v = self.eval(
            e,
            &Ctx {
                scope: &Scope::new(),
                inst: Some(&rc),
            },
        );
        let rc = match Rc::try_unwrap(rc) {
            Ok(inst) => return (inst, v),
            Err(rc) => rc,
        };
        drop(v);
        let model = rc.def.name.name.clone();
        let err = if self.diags.len() > errors {
            Value::Poison
        } else {
            self.err(
            e.span,
            format!(
                "this refers to a function of `{model}` while the model is being made: a parameter or member can use the model's parameters and earlier members, not its functions"
            ),
            )
        };
        let inst = Rc::try_unwrap(rc).unwrap_or_else(|rc| Instance {
            def: rc.def.clone(),
            path: rc.path.clone(),
            env: rc.env.clone(),
        });
        (inst, err)
    }

    pub(crate) fn new_param(&mut self, shape: Vec<usize>, init: Init, span: Span) -> Value {
        let Some(name) = self.binding_path.take() else {
            return self.err(
                span,
                "`param(...)` can only be the value of a model member (`w = param([3, 4])`)",
            );
        };
        if let Some(p) = self.params.iter().find(|p| p.name == name) {
            if p.shape != shape {
                return self.err(
                    span,
                    format!("parameter `{name}` redefined with another shape"),
                );
            }
        } else {
            self.params.push(ParamInfo {
                name: name.clone(),
                shape: shape.clone(),
                init,
            });
        }
        let ty = (DType::F32, crate::types::shape_of(&shape));
        self.node(Op::Param { name, ty }, &[], span)
    }

    pub(crate) fn constant(&mut self, shape: Vec<usize>, data: Vec<f64>, span: Span) -> Value {
        let data = data.into_iter().map(F64::new).collect();
        self.node(Op::Const { shape, data }, &[], span)
    }

    pub(crate) fn fill(&mut self, value: f64, shape: Shape, span: Span) -> Value {
        let c = self.graph.scalar(value);
        if shape.is_empty() {
            return Value::Tensor(c);
        }
        self.node(Op::Broadcast { shape }, &[c], span)
    }
}

/// Whether an actual type fits a declared one; symbols bind consistently within a call.
fn type_fits(want: &Type, got: &Type, syms: &mut HashMap<String, Dim>) -> bool {
    if want.dtype != got.dtype || want.rank() != got.rank() {
        return false;
    }
    want.shape.iter().zip(&got.shape).all(|(w, g)| match w {
        Dim::Known(_) => w == g,
        Dim::Sym(s) => match syms.get(s) {
            Some(prev) => prev == g,
            None => {
                syms.insert(s.clone(), g.clone());
                true
            }
        },
    })
}
