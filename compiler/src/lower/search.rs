//! Architecture search (Zoph & Le, "Neural architecture search with reinforcement
//! learning"): a section `train Controller on architectures { … }` trains a controller that
//! proposes child models. `search(Child, steps: N, baseline: β)` names the child model
//! (whose own section in the file is every child's training recipe) and the number of
//! controller steps; `choices(name: [options…], …)` lists the decisions, in the order the
//! controller takes them, each a parameter of the child with its options (numbers or names).
//!
//! The controller reads, per proposal, `previous` (the decision before each step, the start
//! token `options` first) and `decisions` (the ids taken), both i32[B, steps];
//! `allowed` f32[steps, options] (1 where a step has that option); `reward` (the child's
//! validation accuracy) and `adv` (the reward minus a moving-average baseline), f32[B].

use super::Lowerer;
use super::value::{Func, Value};
use dlc_dsl::ast::Span;
use dlc_dsl::ast::{Arg, ExprKind, TrainDef, TrainStmt};

/// The source a search section trains on.
pub const SOURCE: &str = "architectures";

/// What a search section reads (see the module's documentation).
pub const INPUTS: &[&str] = &["previous", "decisions", "allowed", "reward", "adv"];

/// The statements of this module, for suggestions.
pub(crate) const STATEMENTS: &[&str] = &["search", "choices"];

/// One option of a decision: a number (a width) or a name (an activation).
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    Num(f64),
    Name(String),
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Choice::Num(n) => write!(f, "{n}"),
            Choice::Name(s) => write!(f, "{s}"),
        }
    }
}

/// A parameter of the child and its options.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub name: String,
    pub options: Vec<Choice>,
}

/// The settings of a search section.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    /// The child model; its training section is the recipe of every child.
    pub child: String,
    pub decisions: Vec<Decision>,
    /// Controller steps: one child proposed, trained and rewarded per step.
    pub steps: usize,
    /// The baseline's decay β: b ← β·b + (1 − β)·reward after each step (b starts at the
    /// first reward).
    pub baseline: f64,
}

impl Search {
    /// The most options any decision has.
    pub fn options(&self) -> usize {
        self.decisions
            .iter()
            .map(|d| d.options.len())
            .max()
            .unwrap_or(0)
    }
}

/// (steps, options) of a section's `choices(…)`, read from its text (the sizes the
/// controller's inputs have): the number of decisions and the most options of one.
pub fn space(t: &TrainDef) -> Option<(usize, usize)> {
    t.stmts.iter().find_map(|s| match s {
        TrainStmt::Call { name, args, .. } if name.name == "choices" && !args.is_empty() => {
            let most = args
                .iter()
                .map(|a| match &a.value.kind {
                    ExprKind::List(items) => items.len(),
                    _ => 0,
                })
                .max()?;
            Some((args.len(), most.max(1)))
        }
        _ => None,
    })
}

/// What the statements of a search section gave.
#[derive(Default)]
pub(crate) struct SearchParts {
    pub child: Option<(String, usize, f64)>,
    /// The decisions, each with the span of its name.
    pub decisions: Option<Vec<(Decision, Span)>>,
    pub first: Option<Span>,
}

/// Handle one call statement of a section if it is one of this module's; false if not.
pub(crate) fn statement(
    lw: &mut Lowerer,
    parts: &mut SearchParts,
    name: &str,
    args: &[(&Arg, Value)],
    span: Span,
) -> bool {
    if !STATEMENTS.contains(&name) {
        return false;
    }
    parts.first.get_or_insert(span);
    let taken = if name == "search" {
        parts.child.is_some()
    } else {
        parts.decisions.is_some()
    };
    if taken {
        lw.err(
            span,
            format!("a second {name} statement: a section has one"),
        );
        return true;
    }
    if name == "search" {
        let (mut child, mut steps, mut baseline) = (None, 50, 0.8);
        for (a, v) in args {
            match (a.name.as_ref().map(|n| n.name.as_str()), v) {
                (None, Value::Func(Func::Model(m))) => child = Some(m.name.name.clone()),
                (Some("steps"), Value::Num(n)) if *n >= 1.0 && n.fract() == 0.0 => {
                    steps = *n as usize
                }
                (Some("baseline"), Value::Num(b)) if (0.0..1.0).contains(b) => baseline = *b,
                (_, Value::Poison) => {}
                _ => {
                    lw.err(
                        a.value.span,
                        "search takes the child model, steps: N (a whole number ≥ 1) and baseline: β (in [0, 1))",
                    );
                }
            }
        }
        match child {
            Some(c) => parts.child = Some((c, steps, baseline)),
            None => {
                lw.err(
                    span,
                    "search needs the child model first: search(Child, steps: 50)",
                );
            }
        }
        return true;
    }
    let mut decisions = Vec::new();
    for (a, _) in args {
        let options: Option<Vec<Choice>> = match &a.value.kind {
            ExprKind::List(items) if !items.is_empty() => items
                .iter()
                .map(|i| match &i.kind {
                    ExprKind::Number(n) => Some(Choice::Num(*n)),
                    ExprKind::Neg(x) => match &x.kind {
                        ExprKind::Number(n) => Some(Choice::Num(-*n)),
                        _ => None,
                    },
                    ExprKind::Name(n) => Some(Choice::Name(n.clone())),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match (&a.name, options) {
            (Some(n), Some(options)) => decisions.push((
                Decision {
                    name: n.name.clone(),
                    options,
                },
                n.span,
            )),
            _ => {
                lw.err(
                    a.value.span,
                    "choices takes named lists of options, numbers or names: choices(width: [16, 32], activation: [relu, tanh])",
                );
            }
        }
    }
    parts.decisions = Some(decisions);
    true
}

impl SearchParts {
    /// The search of a section on `architectures`, or errors at `span` for what is missing
    /// or does not fit the child.
    pub(crate) fn finish(
        self,
        lw: &mut Lowerer,
        child_params: impl Fn(&str) -> Option<Vec<String>>,
        span: Span,
    ) -> Option<Search> {
        let (Some((child, steps, baseline)), Some(decisions)) = (self.child, self.decisions) else {
            lw.err(
                span,
                "training on architectures needs search(Child, steps: N) and choices(name: [options], …)",
            );
            return None;
        };
        let Some(params) = child_params(&child) else {
            lw.err(span, format!("no model named `{child}`"));
            return None;
        };
        for (d, at) in &decisions {
            if !params.contains(&d.name) {
                lw.err(
                    *at,
                    format!(
                        "choices: `{}` is not a parameter of model `{child}` (its parameters: {})",
                        d.name,
                        params.join(", ")
                    ),
                );
            }
        }
        if decisions.is_empty() {
            lw.err(span, "choices needs at least one decision");
            return None;
        }
        Some(Search {
            child,
            decisions: decisions.into_iter().map(|(d, _)| d).collect(),
            steps,
            baseline,
        })
    }
}
