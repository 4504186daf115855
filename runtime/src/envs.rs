//! Environments for training from experience: CartPole-v1 and Pendulum-v1, step for step
//! the arithmetic of gymnasium 1.4.0 under numpy 2 (float64 state, the same operations in
//! the same order, float32 observations), so a trajectory replays to the reference's bits
//! (`dlc env`, checked against `../shared/data/{cartpole,pendulum}`). Initial states come
//! from the counter-based generator, not numpy's.

use dlc_compiler::rng;

/// What an agent may do in an environment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActionSpace {
    /// One of `n` actions, 0..n (CartPole: 0 pushes left, 1 right).
    Discrete(usize),
    /// A vector of `dim` numbers in [low, high] (Pendulum: one torque in [−2, 2]).
    Box { dim: usize, low: f32, high: f32 },
}

/// An action: an index for a discrete space, numbers for a box.
#[derive(Clone, Copy, Debug)]
pub enum Act<'a> {
    Index(usize),
    Values(&'a [f32]),
}

/// What a step returns besides the new observation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub reward: f64,
    /// The episode ended in a terminal state (no value beyond it).
    pub terminated: bool,
    /// The episode was cut by the time limit (the state still has a value).
    pub truncated: bool,
}

/// One environment with its time limit.
#[derive(Clone, Debug)]
pub enum Environment {
    CartPole { state: [f64; 4], steps: usize },
    Pendulum { state: [f64; 2], steps: usize },
}

/// The environments by name (the compiler's list: a section `on cartpole` is lowered as
/// one on an environment).
pub const NAMES: &[&str] = dlc_compiler::lower::ENVIRONMENTS;

// CartPole-v1's constants, computed as gymnasium computes them.
const GRAVITY: f64 = 9.8;
const MASSCART: f64 = 1.0;
const MASSPOLE: f64 = 0.1;
const LENGTH: f64 = 0.5;
const FORCE_MAG: f64 = 10.0;
const TAU: f64 = 0.02;
const X_THRESHOLD: f64 = 2.4;
const CARTPOLE_LIMIT: usize = 500;

// Pendulum-v1's.
const MAX_SPEED: f64 = 8.0;
const MAX_TORQUE: f32 = 2.0;
const DT: f64 = 0.05;
const G: f64 = 10.0;
const M: f64 = 1.0;
const L: f64 = 1.0;
const PENDULUM_LIMIT: usize = 200;

impl Environment {
    /// A new environment by name, in the all-zero state (reset or `with_state` before use).
    pub fn new(name: &str) -> Result<Environment, String> {
        match name {
            "cartpole" => Ok(Environment::CartPole {
                state: [0.0; 4],
                steps: 0,
            }),
            "pendulum" => Ok(Environment::Pendulum {
                state: [0.0; 2],
                steps: 0,
            }),
            _ => Err(format!(
                "unknown environment `{name}`; known: {}",
                NAMES.join(", ")
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Environment::CartPole { .. } => "cartpole",
            Environment::Pendulum { .. } => "pendulum",
        }
    }

    /// Length of an observation: CartPole's (x, ẋ, θ, θ̇), Pendulum's (cos θ, sin θ, θ̇).
    pub fn obs_dim(&self) -> usize {
        match self {
            Environment::CartPole { .. } => 4,
            Environment::Pendulum { .. } => 3,
        }
    }

    pub fn action_space(&self) -> ActionSpace {
        match self {
            Environment::CartPole { .. } => ActionSpace::Discrete(2),
            Environment::Pendulum { .. } => ActionSpace::Box {
                dim: 1,
                low: -MAX_TORQUE,
                high: MAX_TORQUE,
            },
        }
    }

    /// The internal state's length (what `--state` gives).
    pub fn state_dim(&self) -> usize {
        match self {
            Environment::CartPole { .. } => 4,
            Environment::Pendulum { .. } => 2,
        }
    }

    /// The internal float64 state.
    pub fn state(&self) -> &[f64] {
        match self {
            Environment::CartPole { state, .. } => state,
            Environment::Pendulum { state, .. } => state,
        }
    }

    /// Start an episode from a given internal state (the step counter at 0).
    pub fn with_state(&mut self, s: &[f64]) -> Result<(), String> {
        if s.len() != self.state_dim() {
            return Err(format!(
                "{} has a state of {} numbers, got {}",
                self.name(),
                self.state_dim(),
                s.len()
            ));
        }
        match self {
            Environment::CartPole { state, steps } => {
                state.copy_from_slice(s);
                *steps = 0;
            }
            Environment::Pendulum { state, steps } => {
                state.copy_from_slice(s);
                *steps = 0;
            }
        }
        Ok(())
    }

    /// Start episode `episode` of the stream `seed`: gymnasium's initial-state
    /// distribution (CartPole: each number uniform on [−0.05, 0.05]; Pendulum: θ uniform
    /// on [−π, π], θ̇ on [−1, 1]) drawn from the counter-based generator.
    pub fn reset(&mut self, seed: u64, episode: u64) {
        let key = rng::name_key(self.name());
        let u = |i: u64| rng::uniform(seed, key, episode, i);
        match self {
            Environment::CartPole { state, steps } => {
                for (i, s) in state.iter_mut().enumerate() {
                    *s = -0.05 + 0.1 * u(i as u64);
                }
                *steps = 0;
            }
            Environment::Pendulum { state, steps } => {
                let pi = std::f64::consts::PI;
                state[0] = -pi + 2.0 * pi * u(0);
                state[1] = -1.0 + 2.0 * u(1);
                *steps = 0;
            }
        }
    }

    /// The float32 observation of the current state.
    pub fn observe(&self, out: &mut [f32]) {
        match self {
            Environment::CartPole { state, .. } => {
                for (o, s) in out.iter_mut().zip(state) {
                    *o = *s as f32;
                }
            }
            Environment::Pendulum { state, .. } => {
                out[0] = state[0].cos() as f32;
                out[1] = state[0].sin() as f32;
                out[2] = state[1] as f32;
            }
        }
    }

    /// One step (gymnasium's `step` under its TimeLimit wrapper).
    pub fn step(&mut self, action: Act) -> Result<Outcome, String> {
        match self {
            Environment::CartPole { state, steps } => {
                let push_right = match action {
                    Act::Index(0) => false,
                    Act::Index(1) => true,
                    other => return Err(format!("cartpole takes action 0 or 1, got {other:?}")),
                };
                let terminated = cartpole_step(state, push_right);
                *steps += 1;
                Ok(Outcome {
                    reward: 1.0,
                    terminated,
                    truncated: *steps >= CARTPOLE_LIMIT,
                })
            }
            Environment::Pendulum { state, steps } => {
                let u = match action {
                    Act::Values([u]) => *u,
                    other => {
                        return Err(format!("pendulum takes one torque, got {other:?}"));
                    }
                };
                let reward = pendulum_step(state, u);
                *steps += 1;
                Ok(Outcome {
                    reward,
                    terminated: false,
                    truncated: *steps >= PENDULUM_LIMIT,
                })
            }
        }
    }
}

/// gymnasium's CartPole step (Euler integration); true when the pole fell or the cart
/// left the track.
fn cartpole_step(s: &mut [f64; 4], push_right: bool) -> bool {
    let total_mass = MASSPOLE + MASSCART;
    let polemass_length = MASSPOLE * LENGTH;
    let theta_threshold = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
    let [x, x_dot, theta, theta_dot] = *s;
    let force = if push_right { FORCE_MAG } else { -FORCE_MAG };
    let costheta = theta.cos();
    let sintheta = theta.sin();
    let temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass;
    let thetaacc = (GRAVITY * sintheta - costheta * temp)
        / (LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / total_mass));
    let xacc = temp - polemass_length * thetaacc * costheta / total_mass;
    let x = x + TAU * x_dot;
    let x_dot = x_dot + TAU * xacc;
    let theta = theta + TAU * theta_dot;
    let theta_dot = theta_dot + TAU * thetaacc;
    *s = [x, x_dot, theta, theta_dot];
    x < -X_THRESHOLD || x > X_THRESHOLD || theta < -theta_threshold || theta > theta_threshold
}

/// numpy's `%` on floats: the remainder with the divisor's sign.
fn py_mod(a: f64, b: f64) -> f64 {
    let m = a % b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        m + b
    } else if m == 0.0 {
        0.0f64.copysign(b)
    } else {
        m
    }
}

/// gymnasium's Pendulum step; returns the reward. The torque is float32, and under
/// numpy 2's promotion rules its terms (0.001·u², 3·u) are computed in float32 before
/// they meet the float64 state.
fn pendulum_step(s: &mut [f64; 2], action: f32) -> f64 {
    let [th, thdot] = *s;
    let u = action.clamp(-MAX_TORQUE, MAX_TORQUE);
    let pi = std::f64::consts::PI;
    let norm = py_mod(th + pi, 2.0 * pi) - pi;
    let torque_cost = 0.001f32 * (u * u);
    let costs = norm * norm + 0.1 * (thdot * thdot) + torque_cost as f64;
    let torque = (3.0 / (M * L * L)) as f32 * u;
    let newthdot = thdot + (3.0 * G / (2.0 * L) * th.sin() + torque as f64) * DT;
    let newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED);
    let newth = th + newthdot * DT;
    *s = [newth, newthdot];
    -costs
}

/// A double as the shortest decimal that reads back to it (Python's `repr`: `nan`, `inf`).
pub fn repr(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:?}")
    }
}

/// Replay `actions` from `state` and return the CSV of the reference files
/// (`../shared/data/{cartpole,pendulum}`), from `step` on; row 0 is the given state.
/// Stops at the first terminated or truncated step.
pub fn replay(name: &str, state: &[f64], actions: &[f64]) -> Result<String, String> {
    let mut env = Environment::new(name)?;
    env.with_state(state)?;
    let mut obs = vec![0f32; env.obs_dim()];
    let mut out = String::new();
    let row =
        |out: &mut String, env: &Environment, obs: &mut [f32], t: usize, a: String, o: Outcome| {
            let mut fields = vec![t.to_string()];
            fields.extend(env.state().iter().map(|v| repr(*v)));
            if let Environment::Pendulum { .. } = env {
                env.observe(obs);
                fields.extend(obs.iter().map(|v| repr(*v as f64)));
            }
            fields.push(a);
            fields.push(repr(o.reward));
            fields.push((o.terminated as u8).to_string());
            fields.push((o.truncated as u8).to_string());
            out.push_str(&fields.join(","));
            out.push('\n');
        };
    let start = Outcome {
        reward: 0.0,
        terminated: false,
        truncated: false,
    };
    match env {
        Environment::CartPole { .. } => {
            out.push_str("step,x,x_dot,theta,theta_dot,action,reward,terminated,truncated\n");
            row(&mut out, &env, &mut obs, 0, "-1".into(), start);
        }
        Environment::Pendulum { .. } => {
            out.push_str(
                "step,theta,theta_dot,cos,sin,obs_theta_dot,action,reward,terminated,truncated\n",
            );
            row(&mut out, &env, &mut obs, 0, "nan".into(), start);
        }
    }
    for (i, &a) in actions.iter().enumerate() {
        let (o, shown) = match env.action_space() {
            ActionSpace::Discrete(n) => {
                if a.fract() != 0.0 || a < 0.0 || a >= n as f64 {
                    return Err(format!(
                        "action {} (number {}) is not one of 0..{}",
                        repr(a),
                        i + 1,
                        n - 1
                    ));
                }
                (env.step(Act::Index(a as usize))?, (a as usize).to_string())
            }
            ActionSpace::Box { .. } => {
                if !a.is_finite() {
                    return Err(format!(
                        "action {} (number {}) is not finite",
                        repr(a),
                        i + 1
                    ));
                }
                let u = a as f32;
                (env.step(Act::Values(&[u]))?, repr(u as f64))
            }
        };
        row(&mut out, &env, &mut obs, i + 1, shown, o);
        if o.terminated || o.truncated {
            break;
        }
    }
    Ok(out)
}

/// Numbers separated by commas (`--state`, `--actions`).
pub fn parse_numbers(flag: &str, s: &str) -> Result<Vec<f64>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .enumerate()
        .map(|(i, t)| {
            t.trim().parse::<f64>().map_err(|_| {
                format!(
                    "--{flag}: `{}` (number {}) is not a number",
                    t.trim(),
                    i + 1
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_modulo_has_the_divisor_sign() {
        assert_eq!(py_mod(-1.0, 3.0), 2.0);
        assert_eq!(py_mod(1.0, -3.0), -2.0);
        assert_eq!(py_mod(7.5, 2.0), 1.5);
        assert_eq!(py_mod(-0.0, 2.0), 0.0);
    }

    #[test]
    fn repr_round_trips() {
        for v in [0.1, 1.0 / 3.0, -2.5e-7, 1e22, 0.013696168732145436] {
            assert_eq!(repr(v).parse::<f64>().unwrap(), v);
        }
        assert_eq!(repr(f64::NAN), "nan");
        assert_eq!(repr(1.0), "1.0");
    }

    #[test]
    fn resets_are_seeded_and_in_range() {
        let mut a = Environment::new("cartpole").unwrap();
        let mut b = a.clone();
        a.reset(3, 7);
        b.reset(3, 7);
        assert_eq!(a.state(), b.state());
        assert!(a.state().iter().all(|v| v.abs() <= 0.05));
        b.reset(3, 8);
        assert_ne!(a.state(), b.state());
        let mut p = Environment::new("pendulum").unwrap();
        p.reset(1, 0);
        assert!(p.state()[0].abs() <= std::f64::consts::PI && p.state()[1].abs() <= 1.0);
    }
}
