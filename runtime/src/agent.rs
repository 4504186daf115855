//! Training from an environment: the loop around a section's objectives (DESIGN: the
//! losses are the file's; experience, acting, lagged copies and evaluation are here).
//!
//! The model's `forward` acts through the evaluation graph on the JIT at batch 1: the
//! observation is written into the same input tensor at every step and the outputs' buffers
//! go back to the engine, so acting allocates no tensor. Updates run the objectives'
//! compiled training steps on batches gathered from experience. Everything random (initial
//! states, exploration, sampled actions, replay batches) is counter-based on the run's
//! seed, so a run is reproducible and resumes where it stopped.

use crate::checkpoint::{Checkpoint, Tensors};
use crate::engine::Engine;
use crate::envs::{Act, ActionSpace, Environment};
use crate::metrics::MetricsSink;
use crate::session::Setup;
use crate::trainer::{StepRunner, TrainState};
use dlc_compiler::interp::Env;
use dlc_compiler::lower::{Agent, Experience, Policy};
use dlc_compiler::rng;
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

/// Episodes of the final evaluation.
pub const FINAL_EPISODES: usize = 100;

/// The counters of a run (a checkpoint's metadata holds them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub env_steps: u64,
    pub episodes: u64,
    /// Periodic evaluations done.
    pub evals: u64,
    /// The best periodic evaluation's mean return and the episode it followed.
    pub best_return: Option<f64>,
    pub best_episode: u64,
}

impl Counters {
    pub fn to_meta(&self, m: &mut std::collections::BTreeMap<String, String>) {
        m.insert("env_steps".into(), self.env_steps.to_string());
        m.insert("episodes".into(), self.episodes.to_string());
        m.insert("evals".into(), self.evals.to_string());
        if let Some(r) = self.best_return {
            m.insert("best_return".into(), format!("{r:e}"));
        }
        m.insert("best_episode".into(), self.best_episode.to_string());
    }

    pub fn from_checkpoint(ck: &Checkpoint, path: &std::path::Path) -> Result<Counters, String> {
        Ok(Counters {
            env_steps: ck.meta_num("env_steps", path)?,
            episodes: ck.meta_num("episodes", path)?,
            evals: ck.meta_num("evals", path)?,
            best_return: ck.meta.get("best_return").and_then(|v| v.parse().ok()),
            best_episode: ck.meta_num("best_episode", path).unwrap_or(0),
        })
    }
}

/// The model acting: `forward(obs)` (and a Gaussian's `log_std(obs)`) at batch 1.
pub struct Actor<'a> {
    engine: &'a Engine,
    env: Env<f32>,
    outputs: Vec<&'static str>,
    pub pred: Vec<f32>,
    pub log_std: Vec<f32>,
    /// The critic's `value(obs)`, when the graph has it.
    pub value: f32,
}

impl<'a> Actor<'a> {
    /// The policy graph's outputs: `pred`, then `log_std` and `value` when it has them.
    pub fn new(engine: &'a Engine, obs_dim: usize) -> Actor<'a> {
        let mut env = Env::new(0, 0);
        env.values
            .insert("obs".into(), ArrayD::zeros(IxDyn(&[1, obs_dim])));
        env.sizes.insert("B".into(), 1);
        let has = engine.outputs();
        let outputs = ["pred", "log_std", "value"]
            .into_iter()
            .filter(|n| has.iter().any(|h| h == n))
            .collect();
        Actor {
            engine,
            env,
            outputs,
            pred: Vec::new(),
            log_std: Vec::new(),
            value: 0.0,
        }
    }

    /// Take the parameters to act with (give them back with [`release`](Self::release)).
    pub fn hold(&mut self, params: &mut Tensors) {
        for (k, v) in std::mem::take(params) {
            self.env.values.insert(k, v);
        }
    }

    pub fn release(&mut self, params: &mut Tensors, names: &[String]) {
        for k in names {
            if let Some(v) = self.env.values.remove(k) {
                params.insert(k.clone(), v);
            }
        }
    }

    /// Run the policy's graph on one observation into `pred` (and `log_std`).
    pub fn forward(&mut self, obs: &[f32]) -> Result<(), String> {
        let input = self
            .env
            .values
            .get_mut("obs")
            .expect("the observation input");
        input
            .as_slice_mut()
            .expect("a standard-layout input")
            .copy_from_slice(obs);
        let out = self.engine.run(&self.env, &self.outputs)?;
        for (name, a) in self.outputs.iter().zip(out) {
            match *name {
                "pred" => {
                    self.pred.clear();
                    self.pred.extend(a.iter().copied());
                }
                "log_std" => {
                    self.log_std.clear();
                    self.log_std.extend(a.iter().copied());
                }
                _ => self.value = a.iter().next().copied().unwrap_or(f32::NAN),
            }
            self.engine.recycle(a);
        }
        Ok(())
    }

    /// Tensor buffers the engine has allocated so far (constant while acting).
    pub fn buffers_allocated(&self) -> usize {
        self.engine.buffers_allocated()
    }
}

// Keys of the random streams.
const KEY_EXPLORE: &str = "agent.explore";
const KEY_ACT: &str = "agent.act";
const KEY_REPLAY: &str = "agent.replay";
const KEY_PERIODIC: &str = "agent.periodic-eval";
const KEY_FINAL: &str = "agent.final-eval";

/// The index of the first largest value.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The deterministic policy's action (evaluation): the best action, or the Gaussian's mean.
fn deterministic(space: ActionSpace, actor: &Actor, action: &mut [f32]) {
    match space {
        ActionSpace::Discrete(_) => action[0] = argmax(&actor.pred) as f32,
        ActionSpace::Box { .. } => action.copy_from_slice(&actor.pred[..action.len()]),
    }
}

/// An exploring action at environment step `t` of the stream `seed`: its numbers (an index
/// as one number for a discrete space) and its log-probability under the policy (0 for
/// ε-greedy).
fn choose(
    policy: &Policy,
    space: ActionSpace,
    actor: &Actor,
    (seed, t): (u64, u64),
    eps: f64,
    action: &mut [f32],
) -> f64 {
    match (policy, space) {
        (Policy::EpsilonGreedy { .. }, ActionSpace::Discrete(n)) => {
            let k = rng::name_key(KEY_EXPLORE);
            if rng::uniform(seed, k, t, 0) < eps {
                action[0] = ((rng::uniform(seed, k, t, 1) * n as f64) as usize).min(n - 1) as f32;
            } else {
                action[0] = argmax(&actor.pred) as f32;
            }
            0.0
        }
        (Policy::Softmax, ActionSpace::Discrete(n)) => {
            let logits = &actor.pred[..n];
            let m = logits.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
            let z: f64 = logits.iter().map(|l| (*l as f64 - m).exp()).sum();
            let u = rng::uniform(seed, rng::name_key(KEY_ACT), t, 0) * z;
            let mut acc = 0.0;
            let mut pick = n - 1;
            for (i, l) in logits.iter().enumerate() {
                acc += (*l as f64 - m).exp();
                if u < acc {
                    pick = i;
                    break;
                }
            }
            action[0] = pick as f32;
            logits[pick] as f64 - m - z.ln()
        }
        (Policy::Gaussian, ActionSpace::Box { dim, .. }) => {
            let mut logp = 0.0;
            for i in 0..dim {
                let mu = actor.pred[i] as f64;
                let ls = actor.log_std[i.min(actor.log_std.len() - 1)] as f64;
                let e = rng::normal(seed, rng::name_key(KEY_ACT), t, i as u64);
                action[i] = (mu + ls.exp() * e) as f32;
                logp += -0.5 * e * e - ls - 0.5 * (2.0 * std::f64::consts::PI).ln();
            }
            logp
        }
        _ => 0.0,
    }
}

/// The policy's checks against the environment and the model's outputs.
fn check_policy(policy: &Policy, env: &Environment) -> Result<(), String> {
    match (policy, env.action_space()) {
        (Policy::EpsilonGreedy { .. } | Policy::Softmax, ActionSpace::Discrete(_)) => Ok(()),
        (Policy::Gaussian, ActionSpace::Box { .. }) => Ok(()),
        (Policy::Gaussian, _) => Err(format!(
            "{}: a Gaussian policy needs continuous actions; its actions are discrete (epsilon_greedy or softmax_policy)",
            env.name()
        )),
        _ => Err(format!(
            "{}: its actions are continuous: act with gaussian_policy()",
            env.name()
        )),
    }
}

/// Mean and standard deviation of the returns of the deterministic policy with `params`
/// (named `names`, lent to the actor for the episodes) over `episodes` episodes of the
/// stream `stream`.
pub fn evaluate(
    actor: &mut Actor,
    params: &mut Tensors,
    names: &[String],
    env: &mut Environment,
    stream: u64,
    episodes: usize,
) -> Result<(f64, f64), String> {
    actor.hold(params);
    let returns = play(actor, env, stream, episodes);
    actor.release(params, names);
    Ok(mean_std(&returns?))
}

/// The return of each of `episodes` episodes of the stream `stream`, acted deterministically.
fn play(
    actor: &mut Actor,
    env: &mut Environment,
    stream: u64,
    episodes: usize,
) -> Result<Vec<f64>, String> {
    let space = env.action_space();
    let mut obs = vec![0f32; env.obs_dim()];
    let mut action = vec![0f32; action_len(space)];
    let mut returns = Vec::with_capacity(episodes);
    for i in 0..episodes {
        env.reset(stream, i as u64);
        let mut total = 0.0;
        loop {
            env.observe(&mut obs);
            actor.forward(&obs)?;
            deterministic(space, actor, &mut action);
            let o = env.step(to_act(space, &action))?;
            total += o.reward;
            if o.terminated || o.truncated {
                break;
            }
        }
        returns.push(total);
    }
    Ok(returns)
}

fn action_len(space: ActionSpace) -> usize {
    match space {
        ActionSpace::Discrete(_) => 1,
        ActionSpace::Box { dim, .. } => dim,
    }
}

fn to_act(space: ActionSpace, a: &[f32]) -> Act<'_> {
    match space {
        ActionSpace::Discrete(_) => Act::Index(a[0] as usize),
        ActionSpace::Box { .. } => Act::Values(a),
    }
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// The stream of the `k`-th periodic evaluation's initial states in a run of seed `seed`.
fn periodic_stream(seed: u64, k: u64) -> u64 {
    rng::bits(seed, rng::name_key(KEY_PERIODIC), k, 0)
}

/// The stream of the final evaluation's initial states: the same for every run and
/// checkpoint, and unlike any training or periodic-evaluation stream.
pub fn final_stream() -> u64 {
    rng::name_key(KEY_FINAL)
}

/// Experience kept between updates: columns of rows.
#[derive(Default)]
pub struct Rows {
    pub obs: Vec<f32>,
    pub action: Vec<f32>,
    pub reward: Vec<f32>,
    pub next_obs: Vec<f32>,
    pub done: Vec<f32>,
    pub ret: Vec<f32>,
    pub logp: Vec<f32>,
    /// The critic's value of each state as the agent acted, and the advantages from it.
    pub value: Vec<f32>,
    pub adv: Vec<f32>,
    /// Rows held; the ring's next slot (replay).
    pub len: usize,
    pub pos: usize,
}

impl Rows {
    /// The inputs of a batch of `rows`, for the names an update reads.
    fn gather(
        &self,
        rows: &[usize],
        names: &[String],
        obs_dim: usize,
        act: usize,
        discrete: bool,
    ) -> Vec<(String, ArrayD<f32>)> {
        let b = rows.len();
        names
            .iter()
            .map(|name| {
                let (col, width): (&[f32], usize) = match name.as_str() {
                    "obs" => (&self.obs, obs_dim),
                    "next_obs" => (&self.next_obs, obs_dim),
                    "action" => (&self.action, act),
                    "reward" => (&self.reward, 1),
                    "done" => (&self.done, 1),
                    "ret" => (&self.ret, 1),
                    "adv" => (&self.adv, 1),
                    _ => (&self.logp, 1),
                };
                let mut v = Vec::with_capacity(b * width);
                for &r in rows {
                    v.extend_from_slice(&col[r * width..(r + 1) * width]);
                }
                let shape: Vec<usize> = match name.as_str() {
                    "obs" | "next_obs" => vec![b, obs_dim],
                    "action" if !discrete => vec![b, act],
                    _ => vec![b],
                };
                (
                    name.clone(),
                    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("gathered rows"),
                )
            })
            .collect()
    }

    /// Store a transition in the ring of `capacity` rows.
    #[allow(clippy::too_many_arguments)]
    fn push_ring(
        &mut self,
        capacity: usize,
        obs: &[f32],
        action: &[f32],
        reward: f64,
        next_obs: &[f32],
        done: bool,
    ) {
        if self.obs.len() < capacity * obs.len() {
            self.obs.resize(capacity * obs.len(), 0.0);
            self.next_obs.resize(capacity * obs.len(), 0.0);
            self.action.resize(capacity * action.len(), 0.0);
            self.reward.resize(capacity, 0.0);
            self.done.resize(capacity, 0.0);
        }
        let (d, a, p) = (obs.len(), action.len(), self.pos);
        self.obs[p * d..(p + 1) * d].copy_from_slice(obs);
        self.next_obs[p * d..(p + 1) * d].copy_from_slice(next_obs);
        self.action[p * a..(p + 1) * a].copy_from_slice(action);
        self.reward[p] = reward as f32;
        self.done[p] = done as u8 as f32;
        self.pos = (p + 1) % capacity;
        self.len = (self.len + 1).min(capacity);
    }

    /// The columns by name, in a fixed order (the checkpoint's tensors `experience.NAME`).
    fn columns(&self) -> [(&'static str, &Vec<f32>); 9] {
        [
            ("obs", &self.obs),
            ("action", &self.action),
            ("reward", &self.reward),
            ("next_obs", &self.next_obs),
            ("done", &self.done),
            ("ret", &self.ret),
            ("logp", &self.logp),
            ("value", &self.value),
            ("adv", &self.adv),
        ]
    }

    /// The experience held, as checkpoint tensors (`experience.obs`, …) and metadata, so
    /// that a resumed run continues with the same replay buffer or unfinished batch.
    pub fn to_checkpoint(&self, ck: &mut Checkpoint) {
        for (name, col) in self.columns() {
            ck.tensors.insert(
                format!("experience.{name}"),
                ArrayD::from_shape_vec(IxDyn(&[col.len()]), col.clone()).expect("1-D"),
            );
        }
        ck.meta
            .insert("experience_len".into(), self.len.to_string());
        ck.meta
            .insert("experience_pos".into(), self.pos.to_string());
    }

    pub fn from_checkpoint(ck: &Checkpoint, path: &std::path::Path) -> Result<Rows, String> {
        if !ck.meta.contains_key("experience_len") {
            return Ok(Rows::default());
        }
        let col = |name: &str| -> Result<Vec<f32>, String> {
            let t = ck
                .tensors
                .get(&format!("experience.{name}"))
                .ok_or_else(|| format!("{}: no experience.{name}", path.display()))?;
            Ok(t.iter().copied().collect())
        };
        let mut r = Rows {
            obs: col("obs")?,
            action: col("action")?,
            reward: col("reward")?,
            next_obs: col("next_obs")?,
            done: col("done")?,
            ret: col("ret")?,
            logp: col("logp")?,
            value: col("value")?,
            adv: col("adv")?,
            len: 0,
            pos: 0,
        };
        r.len = ck.meta_num("experience_len", path)?;
        r.pos = ck.meta_num("experience_pos", path)?;
        if r.reward.len() < r.len || r.pos > r.reward.len() {
            return Err(format!(
                "{}: the experience's counters do not fit it",
                path.display()
            ));
        }
        Ok(r)
    }
}

/// The names among the experience's inputs that the objectives' steps read, checked
/// against what the experience gives.
fn inputs_read(setup: &Setup, experience: &Experience) -> Result<Vec<String>, String> {
    let given: &[&str] = match experience {
        Experience::Replay { .. } => &["obs", "action", "reward", "next_obs", "done"],
        Experience::Episodes { lambda: None, .. } => &["obs", "action", "reward", "ret", "logp"],
        Experience::Episodes { .. } => &["obs", "action", "reward", "ret", "logp", "adv"],
    };
    let mut names: Vec<String> = Vec::new();
    for s in &setup.steps {
        for (name, _) in s
            .train
            .graph
            .leaves(|op| matches!(op, dlc_compiler::ops::Op::Input { .. }))
        {
            if dlc_compiler::lower::ENV_INPUTS.contains(&name.as_str()) && !names.contains(&name) {
                if !given.contains(&name.as_str()) {
                    let what = match experience {
                        Experience::Replay { .. } => "replay(…) gives",
                        Experience::Episodes { .. } => "episodes(…) gives",
                    };
                    return Err(format!(
                        "{}: objective `{}` reads `{name}`, but {what} {}",
                        setup.program.source.name,
                        s.name,
                        given.join(", ")
                    ));
                }
                names.push(name);
            }
        }
    }
    // A fixed order: the experience's.
    names.sort_by_key(|n| given.iter().position(|g| g == n));
    Ok(names)
}

/// The whole state of a run from an environment.
pub struct Run {
    pub st: TrainState,
    pub counters: Counters,
    pub rows: Rows,
    /// When the best snapshot replaced the final weights for evaluation: the weights
    /// training had reached, which a resumed run continues from.
    pub last: Option<Tensors>,
}

impl Run {
    /// The checkpoint of the run: the weights evaluated as the parameters, and what
    /// `--resume` needs (the counters, the experience, the weights training reached).
    pub fn checkpoint(&self, setup: &Setup, env: &str) -> Checkpoint {
        let mut ck = self.st.checkpoint_on(setup, env);
        self.counters.to_meta(&mut ck.meta);
        self.rows.to_checkpoint(&mut ck);
        if let Some(last) = &self.last {
            for (k, v) in last {
                ck.tensors.insert(format!("last.{k}"), v.clone());
            }
        }
        ck
    }

    /// A run restored from a checkpoint, continuing from the weights training reached.
    pub fn from_checkpoint(
        setup: &Setup,
        ck: &Checkpoint,
        path: &std::path::Path,
    ) -> Result<Run, String> {
        let mut st = TrainState::from_checkpoint(setup, ck, path)?;
        for (k, v) in st.params.iter_mut() {
            if let Some(t) = ck.tensors.get(&format!("last.{k}")) {
                if t.shape() != v.shape() {
                    return Err(format!(
                        "{}: `last.{k}` has the wrong shape",
                        path.display()
                    ));
                }
                *v = t.clone();
            }
        }
        Ok(Run {
            st,
            counters: Counters::from_checkpoint(ck, path)?,
            rows: Rows::from_checkpoint(ck, path)?,
            last: None,
        })
    }
}

/// Where the time of a run went.
#[derive(Default)]
struct Clock {
    act: Duration,
    env: Duration,
    update: Duration,
    eval: Duration,
}

/// How long [`train`] runs and what it checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Environment steps (the section's `steps` when None).
    pub budget: Option<u64>,
    /// Stop after this many episodes and wait to be interrupted ([`STALL_ENV`]).
    pub stall_after_episode: Option<u64>,
    /// `--check-numerics`: stop at the first update whose results are not finite, naming
    /// the op that first gave a value that is not finite (`numerics`).
    pub check_numerics: bool,
}

/// The test-only environment variable that makes [`train`] stop after this many episodes
/// and wait to be interrupted (Ctrl-C) or killed, so that a test can stop a run without
/// racing it.
pub const STALL_ENV: &str = "DLC_TEST_STALL_AFTER_EPISODE";

/// Train until the environment-step budget (the section's `steps`, or `budget`) is spent
/// (at the end of the episode that spends it, so that a resumed run continues exactly as
/// one that was not stopped) or periodic evaluation reaches `stop_at`; then restore the
/// best periodic snapshot if it beats the final weights, and evaluate over
/// [`FINAL_EPISODES`] episodes. `save` sees the run after every periodic evaluation and at
/// the end. Ctrl-C (`interrupt`) stops the run at the end of the running episode, where
/// `--resume` continues it exactly, without the final evaluation.
pub fn train(
    setup: &Setup,
    mut run: Run,
    limits: &Limits,
    sink: &mut MetricsSink,
    save: &mut dyn FnMut(&Run) -> Result<(), String>,
) -> Result<Run, String> {
    let Limits {
        budget,
        stall_after_episode,
        check_numerics,
    } = *limits;
    let agent: &Agent = setup
        .cfg
        .agent
        .as_ref()
        .ok_or("not a section on an environment")?;
    let mut env = Environment::new(&agent.env)?;
    check_policy(&agent.policy, &env)?;
    let names = inputs_read(setup, &agent.experience)?;
    let space = env.action_space();
    let (obs_dim, act_len) = (env.obs_dim(), action_len(space));
    let discrete = matches!(space, ActionSpace::Discrete(_));
    let param_names: Vec<String> = run.st.params.keys().cloned().collect();
    let runners: Vec<StepRunner> = setup
        .steps
        .iter()
        .map(|s| StepRunner::new(&run.st, s))
        .collect();
    let mut actor = Actor::new(act_engine(setup)?, obs_dim);
    let budget = budget.unwrap_or(agent.steps);
    let seed = run.st.seed;
    // A fresh run starts its lagged copy from the model.
    if let Some(l) = &agent.lagged
        && run.counters.env_steps == 0
    {
        copy_lagged(&mut run.st.params, &l.name);
    }
    let mut clock = Clock::default();
    let t_start = Instant::now();
    let steps_before = run.counters.env_steps;
    let mut obs = vec![0f32; obs_dim];
    let mut next = vec![0f32; obs_dim];
    let mut action = vec![0f32; act_len];
    // Per objective: (sum of values, count) since the last episode line.
    let mut values = vec![(0.0f64, 0usize); setup.steps.len()];
    let mut reported: Reported = Vec::new();
    let mut stopped = false;
    let say_every = 20;
    while run.counters.env_steps < budget && !stopped && !crate::interrupt::requested() {
        let episode = run.counters.episodes;
        // One episode, acting on the current weights; updates as the experience says.
        env.reset(seed, episode);
        env.observe(&mut obs);
        let start_row = run.rows.len;
        let (mut total, mut length) = (0.0f64, 0u64);
        let mut bootstrap;
        actor.hold(&mut run.st.params);
        loop {
            let t = run.counters.env_steps;
            let eps = match agent.policy {
                Policy::EpsilonGreedy { start, end, steps } => {
                    start + (end - start) * (t as f64 / steps as f64).min(1.0)
                }
                _ => 0.0,
            };
            let t0 = Instant::now();
            actor.forward(&obs)?;
            let logp = choose(&agent.policy, space, &actor, (seed, t), eps, &mut action);
            let t1 = Instant::now();
            let o = env.step(to_act(space, &action))?;
            env.observe(&mut next);
            let t2 = Instant::now();
            clock.act += t1 - t0;
            clock.env += t2 - t1;
            total += o.reward;
            length += 1;
            run.counters.env_steps += 1;
            match &agent.experience {
                Experience::Replay {
                    capacity,
                    warmup,
                    batch,
                    every,
                } => {
                    run.rows
                        .push_ring(*capacity, &obs, &action, o.reward, &next, o.terminated);
                    if run.rows.len >= *warmup && run.counters.env_steps % *every as u64 == 0 {
                        actor.release(&mut run.st.params, &param_names);
                        let k = rng::name_key(KEY_REPLAY);
                        let rows: Vec<usize> = (0..*batch)
                            .map(|i| {
                                let u = rng::uniform(seed, k, run.st.step, i as u64);
                                ((u * run.rows.len as f64) as usize).min(run.rows.len - 1)
                            })
                            .collect();
                        let t3 = Instant::now();
                        let inputs = run.rows.gather(&rows, &names, obs_dim, act_len, discrete);
                        update(
                            setup,
                            &runners,
                            &mut run.st,
                            inputs,
                            (&mut values, &mut reported),
                            check_numerics.then_some(run.counters.episodes + 1),
                        )?;
                        if let Some(l) = &agent.lagged
                            && run.st.step % l.every as u64 == 0
                        {
                            copy_lagged(&mut run.st.params, &l.name);
                        }
                        clock.update += t3.elapsed();
                        actor.hold(&mut run.st.params);
                    }
                }
                Experience::Episodes { .. } => {
                    let r = &mut run.rows;
                    r.obs.extend_from_slice(&obs);
                    r.action.extend_from_slice(&action);
                    r.reward.push(o.reward as f32);
                    r.logp.push(logp as f32);
                    r.value.push(actor.value);
                    r.len += 1;
                }
            }
            std::mem::swap(&mut obs, &mut next);
            if o.terminated || o.truncated {
                // The value beyond the last step: none after a terminal state, the
                // critic's estimate after a cut.
                bootstrap = 0.0;
                if !o.terminated && actor.outputs.contains(&"value") {
                    actor.forward(&obs)?;
                    bootstrap = actor.value as f64;
                }
                break;
            }
        }
        actor.release(&mut run.st.params, &param_names);
        run.counters.episodes += 1;
        if let Experience::Episodes {
            count,
            gamma,
            epochs,
            batch,
            lambda,
        } = &agent.experience
        {
            let r = &mut run.rows;
            r.ret.resize(r.len, 0.0);
            r.adv.resize(r.len, 0.0);
            let (from, to) = (start_row, r.len);
            let (ret, adv) = (&mut r.ret[from..to], &mut r.adv[from..to]);
            match lambda {
                None => discounted_returns(&r.reward[from..to], *gamma, ret),
                Some(l) => {
                    let (rw, v) = (&r.reward[from..to], &r.value[from..to]);
                    advantages(rw, v, bootstrap, *gamma, *l, adv, ret)
                }
            }
            if run.counters.episodes % *count as u64 == 0 {
                let t3 = Instant::now();
                let n = r.len;
                let size = if *batch == 0 { n } else { (*batch).min(n) };
                for e in 0..*epochs {
                    let order = crate::trainer::epoch_order(n, seed ^ run.st.step, e + 1);
                    for chunk in order.chunks(size) {
                        let inputs = run.rows.gather(chunk, &names, obs_dim, act_len, discrete);
                        update(
                            setup,
                            &runners,
                            &mut run.st,
                            inputs,
                            (&mut values, &mut reported),
                            // (The episode just counted.)
                            check_numerics.then_some(run.counters.episodes),
                        )?;
                    }
                }
                run.rows = Rows::default();
                clock.update += t3.elapsed();
            }
        }
        // The episode's line.
        let mut m = Map::new();
        m.insert("episode".into(), json!(run.counters.episodes));
        m.insert("return".into(), json!(total));
        m.insert("length".into(), json!(length));
        m.insert("env_steps".into(), json!(run.counters.env_steps));
        m.insert("updates".into(), json!(run.st.step));
        if let Policy::EpsilonGreedy { start, end, steps } = agent.policy {
            let t = run.counters.env_steps as f64;
            m.insert(
                "epsilon".into(),
                json!(start + (end - start) * (t / steps as f64).min(1.0)),
            );
        }
        for (s, (sum, n)) in setup.steps.iter().zip(values.iter_mut()) {
            if *n > 0 {
                m.insert(s.name.clone(), json!(*sum / *n as f64));
            }
            *sum = 0.0;
            *n = 0;
        }
        for (name, sum, n) in reported.iter_mut() {
            if *n > 0 {
                m.insert(name.clone(), json!(*sum / *n as f64));
            }
            *sum = 0.0;
            *n = 0;
        }
        if let Some(ev) = &agent.eval
            && run.counters.episodes % ev.every as u64 == 0
        {
            let t3 = Instant::now();
            let stream = periodic_stream(seed, run.counters.evals);
            let (mean, _) = evaluate(
                &mut actor,
                &mut run.st.params,
                &param_names,
                &mut env,
                stream,
                ev.episodes,
            )?;
            run.counters.evals += 1;
            m.insert("eval_return".into(), json!(mean));
            if run.counters.best_return.is_none_or(|b| mean > b) {
                run.counters.best_return = Some(mean);
                run.counters.best_episode = run.counters.episodes;
                run.st.best = Some(run.st.params.clone());
            }
            if ev.stop_at.is_some_and(|s| mean >= s) {
                stopped = true;
                m.insert("solved".into(), json!(true));
            }
            clock.eval += t3.elapsed();
            save(&run)?;
        }
        if run.counters.episodes % say_every == 0 || m.contains_key("eval_return") {
            let shown: Vec<String> = m
                .iter()
                .map(|(k, v)| match v {
                    Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                        format!("{k} {:.4}", n.as_f64().unwrap_or(0.0))
                    }
                    _ => format!("{k} {v}"),
                })
                .collect();
            say!("{}", shown.join("  "));
        }
        sink.write(m)?;
        if stall_after_episode == Some(run.counters.episodes) {
            say!(
                "stalled after episode {} ({STALL_ENV})",
                run.counters.episodes
            );
            while !crate::interrupt::requested() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if crate::interrupt::requested() {
        return Ok(run);
    }
    // The weights to keep: the best periodic snapshot, unless the final ones do better
    // on the same kind of evaluation.
    let mut restored = None;
    if let (Some(ev), Some(best)) = (&agent.eval, run.counters.best_return) {
        let stream = periodic_stream(seed, run.counters.evals);
        let (last, _) = evaluate(
            &mut actor,
            &mut run.st.params,
            &param_names,
            &mut env,
            stream,
            ev.episodes,
        )?;
        if best > last
            && let Some(b) = run.st.best.clone()
        {
            run.last = Some(std::mem::replace(&mut run.st.params, b));
            restored = Some(run.counters.best_episode);
        }
    }
    let t3 = Instant::now();
    let (mean, std) = evaluate(
        &mut actor,
        &mut run.st.params,
        &param_names,
        &mut env,
        final_stream(),
        FINAL_EPISODES,
    )?;
    clock.eval += t3.elapsed();
    let secs = t_start.elapsed().as_secs_f64();
    let mut m = Map::new();
    m.insert("episodes".into(), json!(run.counters.episodes));
    m.insert("env_steps".into(), json!(run.counters.env_steps));
    m.insert("updates".into(), json!(run.st.step));
    if let Some(e) = restored {
        m.insert("restored_episode".into(), json!(e));
    }
    m.insert("eval_return_mean".into(), json!(mean));
    m.insert("eval_return_std".into(), json!(std));
    m.insert("eval_episodes".into(), json!(FINAL_EPISODES));
    m.insert("seconds".into(), json!((secs * 100.0).round() / 100.0));
    m.insert(
        "env_steps_per_s".into(),
        json!(((run.counters.env_steps - steps_before) as f64 / secs.max(1e-9)).round()),
    );
    for (k, d) in [
        ("act_s", clock.act),
        ("env_s", clock.env),
        ("update_s", clock.update),
        ("eval_s", clock.eval),
    ] {
        m.insert(k.into(), json!((d.as_secs_f64() * 1000.0).round() / 1000.0));
    }
    let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    say!("{}", shown.join("  "));
    sink.write(m)?;
    save(&run)?;
    Ok(run)
}

fn act_engine(setup: &Setup) -> Result<&Engine, String> {
    setup
        .act_engine
        .as_ref()
        .ok_or_else(|| "the policy was not compiled".to_string())
}

/// The discounted return from each step of an episode: G_t = r_t + γ·G_{t+1}.
pub fn discounted_returns(rewards: &[f32], gamma: f64, ret: &mut [f32]) {
    let mut g = 0.0f64;
    for (r, out) in rewards.iter().zip(ret.iter_mut()).rev() {
        g = *r as f64 + gamma * g;
        *out = g as f32;
    }
}

/// Generalised advantage estimation over one episode: δ_t = r_t + γV_{t+1} − V_t (with
/// `bootstrap` as the value after the last step), A_t = δ_t + γλA_{t+1}, and the λ-return
/// A_t + V_t.
pub fn advantages(
    rewards: &[f32],
    values: &[f32],
    bootstrap: f64,
    gamma: f64,
    lambda: f64,
    adv: &mut [f32],
    ret: &mut [f32],
) {
    let (mut a, mut next_v) = (0.0f64, bootstrap);
    for i in (0..rewards.len()).rev() {
        let v = values[i] as f64;
        let delta = rewards[i] as f64 + gamma * next_v - v;
        a = delta + gamma * lambda * a;
        adv[i] = a as f32;
        ret[i] = (a + v) as f32;
        next_v = v;
    }
}

/// The section's reported values (`metrics = [...]`) since the last episode line: (name,
/// sum, count).
type Reported = Vec<(String, f64, usize)>;

/// One update: each objective's step in turn on the same inputs.
fn update(
    setup: &Setup,
    runners: &[StepRunner],
    st: &mut TrainState,
    mut inputs: Vec<(String, ArrayD<f32>)>,
    (values, reported): (&mut [(f64, usize)], &mut Reported),
    check_numerics: Option<u64>,
) -> Result<(), String> {
    for (k, (s, r)) in setup.steps.iter().zip(runners).enumerate() {
        let before = check_numerics.map(|_| (st.params.clone(), st.opt.clone()));
        let out = r.run_named(&s.engine, st, &mut inputs)?;
        if let (Some((params, opt)), Some(episode)) = (&before, check_numerics)
            && !crate::numerics::step_is_finite(out.loss, out.grad_norm, &st.params)
        {
            let when = format!("at update {} (episode {episode})", st.step + 1);
            let at = (st.seed, st.step);
            return Err(crate::numerics::locate(
                setup,
                k,
                (params, opt),
                &inputs,
                at,
                &when,
            ));
        }
        if let Some(p) = out.pred {
            s.engine.recycle(p);
        }
        if !out.loss.is_finite() {
            return Err(format!(
                "update {}: objective `{}` is {}; try a smaller learning rate (--lr)",
                st.step + 1,
                s.name,
                out.loss
            ));
        }
        values[k].0 += out.loss as f64;
        values[k].1 += 1;
        for (name, v) in r.reports.iter().zip(&out.reports) {
            let slot = match reported.iter_mut().position(|(n, _, _)| n == name) {
                Some(i) => &mut reported[i],
                None => {
                    reported.push((name.clone(), 0.0, 0));
                    reported.last_mut().expect("just pushed")
                }
            };
            slot.1 += *v as f64;
            slot.2 += 1;
        }
    }
    st.step += 1;
    Ok(())
}

/// Copy every parameter `p` of the model into its lagged copy `NAME.p`.
fn copy_lagged(params: &mut Tensors, name: &str) {
    let prefix = format!("{name}.");
    let pairs: Vec<(String, String)> = params
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .map(|k| (k.clone(), k[prefix.len()..].to_string()))
        .collect();
    for (lagged, source) in pairs {
        if let Some(v) = params.get(&source).cloned()
            && let Some(slot) = params.get_mut(&lagged)
        {
            *slot = v;
        }
    }
}

/// The final evaluation alone (`dlc eval` of a checkpoint trained on an environment).
pub fn evaluate_final(setup: &Setup, params: &mut Tensors) -> Result<(f64, f64), String> {
    let agent = setup
        .cfg
        .agent
        .as_ref()
        .ok_or("not a section on an environment")?;
    let mut env = Environment::new(&agent.env)?;
    let names: Vec<String> = params.keys().cloned().collect();
    let mut actor = Actor::new(act_engine(setup)?, env.obs_dim());
    evaluate(
        &mut actor,
        params,
        &names,
        &mut env,
        final_stream(),
        FINAL_EPISODES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_are_discounted_from_each_step() {
        let mut ret = [0.0; 3];
        discounted_returns(&[1.0, 2.0, 4.0], 0.5, &mut ret);
        // 4; 2 + 0.5·4 = 4; 1 + 0.5·4 = 3.
        assert_eq!(ret, [3.0, 4.0, 4.0]);
    }

    #[test]
    fn advantages_follow_the_td_residuals() {
        let (mut adv, mut ret) = ([0.0; 2], [0.0; 2]);
        // γ = 0.5, λ = 0.5, V = (1, 2), bootstrap 4, rewards (1, 1):
        // δ₁ = 1 + 0.5·4 − 2 = 1, A₁ = 1; δ₀ = 1 + 0.5·2 − 1 = 1, A₀ = 1 + 0.25·1 = 1.25.
        advantages(&[1.0, 1.0], &[1.0, 2.0], 4.0, 0.5, 0.5, &mut adv, &mut ret);
        assert_eq!(adv, [1.25, 1.0]);
        assert_eq!(ret, [2.25, 3.0]);
        // λ = 1 and V = 0: the discounted return with the bootstrap (3 = 1 + 0.5·4,
        // 2.5 = 1 + 0.5·3).
        advantages(&[1.0, 1.0], &[0.0, 0.0], 4.0, 0.5, 1.0, &mut adv, &mut ret);
        assert_eq!(ret, [2.5, 3.0]);
    }

    #[test]
    fn eval_streams_differ_from_training() {
        assert_ne!(final_stream(), periodic_stream(1, 0));
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
    }
}
