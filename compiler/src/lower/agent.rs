//! Training from an environment (`train Agent on cartpole { … }`): the typed settings of
//! the loop the runtime runs around the section's objectives: where experience comes
//! from (a replay buffer of transitions, or whole episodes with their discounted returns),
//! how the model's `forward` acts (ε-greedy on Q-values, sampling a softmax or a
//! Gaussian), a lagged copy of the model (the DQN's target network), the budget and the
//! evaluation schedule. The losses stay expressions of the section.

use super::eval::Lowerer;
use super::value::Value;
use dlc_dsl::ast::Arg;
use dlc_dsl::ast::Span;

/// Where each update's batch comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Experience {
    /// `replay(capacity: N, warmup: N, batch: N, every: N)`: transitions (`obs`, `action`,
    /// `reward`, `next_obs`, `done`) kept in a ring of `capacity`; once `warmup` are
    /// stored, every `every` environment steps one update on `batch` drawn uniformly.
    Replay {
        capacity: usize,
        warmup: usize,
        batch: usize,
        every: usize,
    },
    /// `episodes(count: N, gamma: G, epochs: E, batch: M)`: `count` whole episodes acted
    /// by the current policy, then `epochs` passes over their steps (`obs`, `action`,
    /// `reward`, `ret` = the discounted return from each step, `logp` = the log-probability
    /// of the action when it was taken) in batches of `batch` (0: all at once).
    /// With `lambda: L`, generalised advantage estimation (Schulman et al., 2016) on the
    /// model's `value(obs)` as the agent acted: `adv` = Σ (γL)^k δ_{t+k} with
    /// δ_t = r_t + γV(s_{t+1}) − V(s_t) (V of a truncated episode's last state bootstraps
    /// it, a terminal state's is 0), and `ret` = adv + V(s_t), the λ-return.
    Episodes {
        count: usize,
        gamma: f64,
        epochs: usize,
        batch: usize,
        lambda: Option<f64>,
    },
}

/// How the model's `forward(obs)` picks actions while training (evaluation always acts
/// deterministically: the greedy action, or the Gaussian's mean).
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// `epsilon_greedy(start: 1, end: 0.05, steps: N)`: `forward` gives one value per
    /// action; a uniformly random action with probability ε (linear from `start` to `end`
    /// over the first `steps` environment steps), else the best.
    EpsilonGreedy { start: f64, end: f64, steps: u64 },
    /// `softmax_policy()`: `forward` gives logits; the action is drawn from their softmax.
    Softmax,
    /// `gaussian_policy()`: `forward` gives the mean μ, the model's `log_std(obs)` the log
    /// standard deviation; the action is μ + σ·ε, ε ~ N(0, 1).
    Gaussian,
}

/// `target = lagged(every: N)`: a copy of the main model whose parameters (named
/// `NAME.…`) are the model's as they were at the last copy, made every `every` updates.
#[derive(Clone, Debug, PartialEq)]
pub struct Lagged {
    pub name: String,
    pub every: usize,
}

/// `evaluate(every: N, episodes: M, stop_at: R)`: every N training episodes, the
/// deterministic policy plays M episodes (from initial states no training or final
/// evaluation uses); the best-scoring weights are kept, and training stops once the mean
/// return reaches `stop_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSchedule {
    pub every: usize,
    pub episodes: usize,
    pub stop_at: Option<f64>,
}

/// The loop around a section on an environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub env: String,
    pub experience: Experience,
    pub policy: Policy,
    pub lagged: Option<Lagged>,
    pub eval: Option<EvalSchedule>,
    /// Environment steps to train for (`steps = N`).
    pub steps: u64,
}

/// The pieces of an `Agent` as the section's statements give them.
#[derive(Default)]
pub(crate) struct AgentParts {
    pub experience: Option<Experience>,
    pub policy: Option<Policy>,
    pub lagged: Option<Lagged>,
    pub eval: Option<EvalSchedule>,
    pub steps: Option<u64>,
    /// Where the first of these statements is (to report them on a data set).
    pub first: Option<Span>,
}

/// The environments a section can train on.
pub const ENVIRONMENTS: &[&str] = &["cartpole", "pendulum"];

/// What a section on an environment reads: the experience's names (which of them an
/// update gets depends on the experience: see [`Experience`]).
pub const INPUTS: &[&str] = &[
    "obs", "action", "reward", "next_obs", "done", "ret", "logp", "adv",
];

/// `NAME = lagged(every: N)`: the call's arguments.
pub fn lagged_call(e: &dlc_dsl::ast::Expr) -> Option<&[Arg]> {
    use dlc_dsl::ast::ExprKind;
    match &e.kind {
        ExprKind::Call(f, args) if matches!(&f.kind, ExprKind::Name(n) if n == "lagged") => {
            Some(args)
        }
        _ => None,
    }
}

/// The statements of this module, for suggestions.
pub(crate) const STATEMENTS: &[&str] = &[
    "replay",
    "episodes",
    "epsilon_greedy",
    "softmax_policy",
    "gaussian_policy",
    "evaluate",
];

/// Named numeric arguments of a call: (name, value, span), each checked against `allowed`.
fn numbers(
    lw: &mut Lowerer,
    call: &str,
    args: &[(&Arg, Value)],
    allowed: &[&str],
) -> Vec<(String, f64, Span)> {
    let mut out = Vec::new();
    for (a, v) in args {
        let Some(name) = &a.name else {
            lw.err(
                a.value.span,
                format!("{call} takes named arguments: {}", allowed.join(", ")),
            );
            continue;
        };
        if !allowed.contains(&name.name.as_str()) {
            lw.err(
                name.span,
                format!(
                    "{call} has no argument `{}`; it takes {}",
                    name.name,
                    allowed.join(", ")
                ),
            );
            continue;
        }
        match v {
            Value::Num(n) if n.is_finite() => out.push((name.name.clone(), *n, a.value.span)),
            Value::Poison => {}
            other => {
                lw.err(
                    a.value.span,
                    format!("`{}` must be a number, found {}", name.name, other.kind()),
                );
            }
        }
    }
    out
}

/// A whole number ≥ `min` or an error at its span.
fn whole(lw: &mut Lowerer, name: &str, v: f64, span: Span, min: f64) -> Option<usize> {
    if v.fract() == 0.0 && v >= min && v < 1e12 {
        Some(v as usize)
    } else {
        lw.err(
            span,
            format!("`{name}` must be a whole number ≥ {min}, found {v}"),
        );
        None
    }
}

/// Handle one call statement of a section if it is one of this module's; false if not.
pub(crate) fn statement(
    lw: &mut Lowerer,
    parts: &mut AgentParts,
    name: &str,
    args: &[(&Arg, Value)],
    span: Span,
) -> bool {
    if !STATEMENTS.contains(&name) {
        return false;
    }
    parts.first.get_or_insert(span);
    let once = |lw: &mut Lowerer, taken: bool, what: &str| {
        if taken {
            lw.err(
                span,
                format!("a second {what} statement: a section has one"),
            );
        }
    };
    match name {
        "replay" => {
            once(
                lw,
                parts.experience.is_some(),
                "experience (replay/episodes)",
            );
            let (mut capacity, mut warmup, mut batch, mut every) = (50_000, 1000, 64, 1);
            for (k, v, sp) in numbers(lw, name, args, &["capacity", "warmup", "batch", "every"]) {
                let Some(n) = whole(lw, &k, v, sp, if k == "warmup" { 0.0 } else { 1.0 }) else {
                    continue;
                };
                match k.as_str() {
                    "capacity" => capacity = n,
                    "warmup" => warmup = n,
                    "batch" => batch = n,
                    _ => every = n,
                }
            }
            if warmup < batch {
                warmup = batch;
            }
            if capacity < warmup {
                lw.err(
                    span,
                    format!("replay: capacity {capacity} is below warmup {warmup}"),
                );
            }
            parts.experience = Some(Experience::Replay {
                capacity,
                warmup,
                batch,
                every,
            });
        }
        "episodes" => {
            once(
                lw,
                parts.experience.is_some(),
                "experience (replay/episodes)",
            );
            let (mut count, mut gamma, mut epochs, mut batch) = (1, 0.99, 1, 0);
            let mut lambda = None;
            let allowed = ["count", "gamma", "epochs", "batch", "lambda"];
            for (k, v, sp) in numbers(lw, name, args, &allowed) {
                match k.as_str() {
                    "gamma" | "lambda" if !(0.0..=1.0).contains(&v) => {
                        lw.err(sp, format!("`{k}` is a discount in [0, 1], found {v}"));
                    }
                    "gamma" => gamma = v,
                    "lambda" => lambda = Some(v),
                    "batch" => batch = whole(lw, &k, v, sp, 0.0).unwrap_or(batch),
                    "count" => count = whole(lw, &k, v, sp, 1.0).unwrap_or(count),
                    _ => epochs = whole(lw, &k, v, sp, 1.0).unwrap_or(epochs),
                }
            }
            parts.experience = Some(Experience::Episodes {
                count,
                gamma,
                epochs,
                batch,
                lambda,
            });
        }
        "epsilon_greedy" => {
            once(lw, parts.policy.is_some(), "policy");
            let (mut start, mut end, mut steps) = (1.0, 0.05, 10_000u64);
            for (k, v, sp) in numbers(lw, name, args, &["start", "end", "steps"]) {
                match k.as_str() {
                    "steps" => steps = whole(lw, &k, v, sp, 1.0).map_or(steps, |n| n as u64),
                    _ if !(0.0..=1.0).contains(&v) => {
                        lw.err(sp, format!("`{k}` is a probability in [0, 1], found {v}"));
                    }
                    "start" => start = v,
                    _ => end = v,
                }
            }
            parts.policy = Some(Policy::EpsilonGreedy { start, end, steps });
        }
        "softmax_policy" | "gaussian_policy" => {
            once(lw, parts.policy.is_some(), "policy");
            numbers(lw, name, args, &[]);
            parts.policy = Some(if name == "softmax_policy" {
                Policy::Softmax
            } else {
                Policy::Gaussian
            });
        }
        _ => {
            once(lw, parts.eval.is_some(), "evaluate");
            let mut e = EvalSchedule {
                every: 10,
                episodes: 10,
                stop_at: None,
            };
            for (k, v, sp) in numbers(lw, name, args, &["every", "episodes", "stop_at"]) {
                match k.as_str() {
                    "every" => e.every = whole(lw, &k, v, sp, 1.0).unwrap_or(e.every),
                    "episodes" => e.episodes = whole(lw, &k, v, sp, 1.0).unwrap_or(e.episodes),
                    _ => e.stop_at = Some(v),
                }
            }
            parts.eval = Some(e);
        }
    }
    true
}

impl AgentParts {
    /// The agent of a section on environment `env`, or errors at `span` for what is
    /// missing.
    pub(crate) fn finish(self, lw: &mut Lowerer, env: &str, span: Span) -> Option<Agent> {
        let Some(experience) = self.experience else {
            lw.err(
                span,
                format!("training on {env} needs its experience: `replay(capacity: 50000, warmup: 1000, batch: 64)` or `episodes(count: 1, gamma: 0.99)`"),
            );
            return None;
        };
        let Some(policy) = self.policy else {
            lw.err(
                span,
                format!("training on {env} needs a policy: `epsilon_greedy(start: 1, end: 0.05, steps: 10000)`, `softmax_policy()` or `gaussian_policy()`"),
            );
            return None;
        };
        Some(Agent {
            env: env.to_string(),
            experience,
            policy,
            lagged: self.lagged,
            eval: self.eval,
            steps: self.steps.unwrap_or(100_000),
        })
    }
}
