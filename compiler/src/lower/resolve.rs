//! Static name resolution over every item of the user's file, including functions that
//! no training section calls, so that every unknown name is reported (lowering only
//! sees the code it evaluates).

use super::builtins;
use dlc_dsl::ast::*;
use dlc_dsl::{Diagnostic, nearest};
use std::collections::HashSet;

struct Resolver<'a> {
    globals: &'a HashSet<String>,
    diags: Vec<Diagnostic>,
}

pub fn check(file: &File, prelude: &File, imported: &[Item]) -> Vec<Diagnostic> {
    let mut globals: HashSet<String> = builtins::ALL.iter().map(|s| s.to_string()).collect();
    for it in prelude.items.iter().chain(imported).chain(&file.items) {
        if let (Item::Model(_) | Item::Fn(_), Some(n)) = (it, it.name()) {
            globals.insert(n.name.clone());
        }
    }
    let mut r = Resolver {
        globals: &globals,
        diags: Vec::new(),
    };
    for it in &file.items {
        match it {
            Item::Fn(f) => r.func(f, &[]),
            Item::Model(m) => {
                let scope = model_scope(m);
                for p in &m.params {
                    if let Some(d) = &p.default {
                        r.expr(d, &scope);
                    }
                }
                for b in &m.bindings {
                    r.expr(&b.value, &scope);
                }
                for f in &m.fns {
                    r.func(f, &scope);
                }
            }
            Item::Import(_) => {}
            Item::Train(t) => {
                let mut scope: Vec<String> =
                    if super::agent::ENVIRONMENTS.contains(&t.data.name.as_str()) {
                        super::agent::INPUTS.iter().map(|s| s.to_string()).collect()
                    } else if t.data.name == super::search::SOURCE {
                        super::search::INPUTS
                            .iter()
                            .map(|s| s.to_string())
                            .collect()
                    } else {
                        // A graph data set's sparse inputs too (`adj`).
                        let mut v: Vec<String> = vec!["x".into(), "y".into()];
                        v.extend(
                            super::SPARSE_INPUTS
                                .iter()
                                .filter(|(d, _)| *d == t.data.name)
                                .map(|(_, n)| n.to_string()),
                        );
                        v
                    };
                if let Some(Item::Model(m)) = file
                    .items
                    .iter()
                    .chain(imported)
                    .find(|i| matches!(i, Item::Model(m) if m.name.name == t.model.name))
                {
                    scope.extend(model_scope(m));
                }
                for a in &t.data_args {
                    r.expr(&a.value, &scope);
                }
                for s in &t.stmts {
                    match s {
                        TrainStmt::Set(b) => {
                            match super::agent::lagged_call(&b.value) {
                                Some(args) => args.iter().for_each(|a| r.expr(&a.value, &scope)),
                                None => r.expr(&b.value, &scope),
                            }
                            scope.push(b.name.name.clone());
                        }
                        TrainStmt::Call { args, .. } => {
                            args.iter().for_each(|a| r.expr(&a.value, &scope))
                        }
                        TrainStmt::Minimize { loss, with, .. } => {
                            r.expr(loss, &scope);
                            if let Some(w) = with {
                                r.expr(w, &scope);
                            }
                        }
                    }
                }
            }
        }
    }
    r.diags
}

fn model_scope(m: &ModelDef) -> Vec<String> {
    let mut s: Vec<String> = m.params.iter().map(|p| p.name.name.clone()).collect();
    s.extend(m.bindings.iter().map(|b| b.name.name.clone()));
    s.extend(m.fns.iter().map(|f| f.name.name.clone()));
    s
}

impl Resolver<'_> {
    fn func(&mut self, f: &FnDef, outer: &[String]) {
        let mut scope: Vec<String> = outer.to_vec();
        scope.extend(f.params.iter().map(|p| p.name.name.clone()));
        for p in &f.params {
            if let Some(t) = &p.ty {
                self.ty(t, &scope);
            }
        }
        if let Some(t) = &f.ret {
            self.ty(t, &scope);
        }
        self.block(&f.body, &scope);
    }

    fn block(&mut self, b: &Block, outer: &[String]) {
        let mut scope = outer.to_vec();
        for l in &b.lets {
            self.expr(&l.value, &scope);
            bind(&l.pattern, &mut scope);
        }
        self.expr(&b.result, &scope);
    }

    fn ty(&mut self, t: &TypeExpr, scope: &[String]) {
        for d in &t.dims {
            match &d.kind {
                // Unbound capitalised names in types are symbolic dimensions.
                ExprKind::Name(n) if n.starts_with(|c: char| c.is_ascii_uppercase()) => {}
                _ => self.expr(d, scope),
            }
        }
    }

    fn name(&mut self, n: &str, span: Span, scope: &[String]) {
        if scope.iter().any(|s| s == n) || self.globals.contains(n) || matches!(n, "true" | "false")
        {
            return;
        }
        let known = scope
            .iter()
            .map(|s| s.as_str())
            .chain(self.globals.iter().map(|s| s.as_str()));
        let msg = match nearest(n, known) {
            Some(s) => format!("unknown name `{n}`; did you mean `{s}`?"),
            None => format!("unknown name `{n}`"),
        };
        self.diags.push(Diagnostic::new(span, msg));
    }

    /// Walk an expression iteratively (expressions are bounded in depth, but the
    /// explicit stack keeps this walk cheap and safe regardless).
    fn expr(&mut self, e: &Expr, scope: &[String]) {
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            match &e.kind {
                ExprKind::Number(_) | ExprKind::Str(_) => {}
                ExprKind::Name(n) => self.name(n, e.span, scope),
                ExprKind::List(items) | ExprKind::Tuple(items) => stack.extend(items),
                ExprKind::Neg(x) => stack.push(x),
                ExprKind::Binary(_, a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                ExprKind::Call(f, args) => {
                    stack.extend(args.iter().map(|a| &a.value));
                    stack.push(f);
                }
                ExprKind::Index(base, items) => {
                    // `zeros[B, n]`: capitalised symbols are allowed as dimensions.
                    for it in items {
                        match it {
                            IndexItem::Expr(x) => match &x.kind {
                                ExprKind::Name(n)
                                    if n.starts_with(|c: char| c.is_ascii_uppercase()) => {}
                                _ => stack.push(x),
                            },
                            IndexItem::Slice {
                                start, end, step, ..
                            } => {
                                stack.extend([start, end, step].into_iter().flatten());
                            }
                        }
                    }
                    stack.push(base);
                }
                ExprKind::Field(base, _) => stack.push(base),
                ExprKind::If(cond, then, otherwise) => {
                    stack.push(cond);
                    for b in [then, otherwise] {
                        self.block(b, scope);
                    }
                }
            }
        }
    }
}

fn bind(p: &Pattern, scope: &mut Vec<String>) {
    match p {
        Pattern::Name(n) => scope.push(n.name.clone()),
        Pattern::Tuple(ps, _) => ps.iter().for_each(|p| bind(p, scope)),
    }
}
