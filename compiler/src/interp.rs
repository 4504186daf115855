//! The reference interpreter: the semantics of every op on ndarray, generic over f32
//! (training) and f64 (gradient checks). It is the oracle that rewrites and JIT kernels
//! are tested against, so it favours plainness over speed.

use crate::ir::{Graph, NodeId};
use crate::ops::{Dist, Op};
use crate::rng;
use crate::types::{DType, Dim, Shape};
use crate::window;
use ndarray::{ArrayD, Axis, IxDyn, Zip};
use std::collections::HashMap;

/// Scalars the interpreter computes in.
pub trait Real:
    ndarray::LinalgScalar
    + num_traits::Float
    + ndarray::ScalarOperand
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> f64 {
        v
    }
    fn f64(self) -> f64 {
        self
    }
}

/// What one run of a graph sees: named leaf values and the randomness counters.
pub struct Env<T> {
    /// Inputs, parameters and states by name.
    pub values: HashMap<String, ArrayD<T>>,
    pub seed: u64,
    pub step: u64,
    /// Sizes of symbolic dimensions that no input of the graph shows (a GAN's generator
    /// step draws noise [B, 64] and reads no data): the trainer gives the batch size `B`.
    pub sizes: HashMap<String, usize>,
    /// The global row of the batch's first row (0 but on a rank of data-parallel
    /// training): a random op over [B, …] draws element i at index
    /// i + row_offset · (elements per row), as one process drawing the whole batch would.
    pub row_offset: u64,
}

impl<T> Env<T> {
    pub fn new(seed: u64, step: u64) -> Env<T> {
        Env {
            values: HashMap::new(),
            seed,
            step,
            sizes: HashMap::new(),
            row_offset: 0,
        }
    }
}

/// Sees outputs of a run as they are computed (data-parallel training starts the
/// all-reduce of each bucket of gradients while the rest of the backward pass runs).
pub trait Observer<T> {
    /// Observed output `k` (its index among the observed) is computed; called once each.
    fn ready(&mut self, k: usize, value: ndarray::ArrayViewD<T>);
    /// Called between kernels: a chance to make progress on work `ready` started.
    fn tick(&mut self) {}
}

/// [`run`], handing the `observed` outputs to `obs` (here all at the end, in the order
/// asked: the interpreter is the oracle, not the fast path) instead of returning them.
pub fn run_observed<T: Real>(
    g: &Graph,
    env: &Env<T>,
    outputs: &[&str],
    observed: &[&str],
    obs: &mut dyn Observer<T>,
) -> Result<Vec<ArrayD<T>>, String> {
    let all: Vec<&str> = outputs.iter().chain(observed).copied().collect();
    let mut out = run(g, env, &all)?;
    for (k, v) in out.drain(outputs.len()..).enumerate() {
        obs.ready(k, v.view());
    }
    Ok(out)
}

/// Run the graph and return the named outputs, in the order asked.
pub fn run<T: Real>(g: &Graph, env: &Env<T>, outputs: &[&str]) -> Result<Vec<ArrayD<T>>, String> {
    let mut roots = Vec::new();
    for name in outputs {
        roots.push(
            g.output(name)
                .ok_or_else(|| format!("the graph has no output `{name}`"))?,
        );
    }
    let vals = run_nodes(g, env, &roots)?;
    Ok(roots.iter().map(|r| vals[r].clone()).collect())
}

/// Evaluate the nodes the given roots depend on. Returns every computed value.
pub fn run_nodes<T: Real>(
    g: &Graph,
    env: &Env<T>,
    roots: &[NodeId],
) -> Result<HashMap<NodeId, ArrayD<T>>, String> {
    run_nodes_in(g, env, roots, env.sizes.clone())
}

/// `run_nodes` with symbolic sizes already known (a kernel body sees its graph's `B`).
fn run_nodes_in<T: Real>(
    g: &Graph,
    env: &Env<T>,
    roots: &[NodeId],
    mut syms: HashMap<String, usize>,
) -> Result<HashMap<NodeId, ArrayD<T>>, String> {
    let order = g.schedule_from(roots);
    let mut vals: HashMap<NodeId, ArrayD<T>> = HashMap::new();
    // Bind symbolic dimensions from the leaves first.
    bind_into(g, env, &order, &mut syms)?;
    for &n in &order {
        if let Op::Input { name, .. } | Op::Param { name, .. } | Op::State { name, .. } =
            &g.node(n).op
        {
            vals.insert(n, env.values[name].clone());
        }
    }
    let mut kernels: HashMap<u32, Vec<ArrayD<T>>> = HashMap::new();
    let mut scans: HashMap<(u32, Vec<NodeId>), Vec<ArrayD<T>>> = HashMap::new();
    for &n in &order {
        if vals.contains_key(&n) {
            continue;
        }
        let ins: Vec<&ArrayD<T>> = g.inputs(n).iter().map(|i| &vals[i]).collect();
        let v = match &g.node(n).op {
            Op::Scan {
                body,
                output,
                carries,
                xs,
                reverse,
                ..
            } => {
                let key = (*body, g.inputs(n));
                if !scans.contains_key(&key) {
                    let b = g
                        .bodies
                        .get(*body as usize)
                        .ok_or_else(|| format!("scan body {body} is missing"))?;
                    let outs = run_scan(b, *carries as usize, *xs as usize, *reverse, &ins, env)?;
                    scans.insert(key.clone(), outs);
                }
                scans[&key]
                    .get(*output as usize)
                    .cloned()
                    .ok_or_else(|| format!("scan {body} has no output {output}"))?
            }
            Op::Fused { body, output, .. } => {
                if !kernels.contains_key(body) {
                    let b = g
                        .bodies
                        .get(*body as usize)
                        .ok_or_else(|| format!("kernel body {body} is missing"))?;
                    let k = run_kernel(b, &ins, env, &syms)?;
                    kernels.insert(*body, k);
                }
                kernels[body]
                    .get(*output as usize)
                    .cloned()
                    .ok_or_else(|| format!("kernel {body} has no output {output}"))?
            }
            op => eval_op(op, &ins, &syms, env, g.node(n).ty.dtype)?,
        };
        vals.insert(n, v);
    }
    Ok(vals)
}

/// Bind the symbolic sizes the leaves among `order` give, checking their shapes.
pub fn bind_symbols<T: Real>(
    g: &Graph,
    env: &Env<T>,
    order: &[NodeId],
) -> Result<HashMap<String, usize>, String> {
    let mut syms = env.sizes.clone();
    bind_into(g, env, order, &mut syms)?;
    Ok(syms)
}

/// Check every leaf among `order` has a value of its declared shape, binding symbols.
fn bind_into<T: Real>(
    g: &Graph,
    env: &Env<T>,
    order: &[NodeId],
    syms: &mut HashMap<String, usize>,
) -> Result<(), String> {
    for &n in order {
        if let Op::Input { name, ty } | Op::Param { name, ty } | Op::State { name, ty } =
            &g.node(n).op
        {
            let v = env
                .values
                .get(name)
                .ok_or_else(|| format!("no value given for `{name}`"))?;
            bind(&ty.1, v.shape(), syms).map_err(|e| format!("`{name}`: {e}"))?;
        }
    }
    Ok(())
}

/// Evaluate one node that is neither a leaf, a scan nor a fused kernel.
pub fn eval_node<T: Real>(
    g: &Graph,
    n: NodeId,
    ins: &[&ArrayD<T>],
    syms: &HashMap<String, usize>,
    env: &Env<T>,
) -> Result<ArrayD<T>, String> {
    eval_op(&g.node(n).op, ins, syms, env, g.node(n).ty.dtype)
}

/// Run a fused kernel's body: its inputs are `in0…`, its outputs `out0…`.
pub fn run_kernel<T: Real>(
    body: &Graph,
    ins: &[&ArrayD<T>],
    env: &Env<T>,
    syms: &HashMap<String, usize>,
) -> Result<Vec<ArrayD<T>>, String> {
    let mut e = Env {
        values: HashMap::new(),
        seed: env.seed,
        step: env.step,
        sizes: env.sizes.clone(),
        row_offset: env.row_offset,
    };
    for (i, v) in ins.iter().enumerate() {
        e.values.insert(format!("in{i}"), (*v).clone());
    }
    let roots: Vec<NodeId> = (0..body.outputs.len())
        .map(|i| {
            body.output(&format!("out{i}"))
                .ok_or_else(|| format!("kernel body has no output out{i}"))
        })
        .collect::<Result<_, _>>()?;
    let vals = run_nodes_in(body, &e, &roots, syms.clone())?;
    Ok(roots.iter().map(|r| vals[r].clone()).collect())
}

/// Run a scan (see [`Op::Scan`]): its body once per step, threading the carries.
/// Returns every output: the final carries, then the stacked per-step outputs.
pub fn run_scan<T: Real>(
    body: &Graph,
    carries: usize,
    xs: usize,
    reverse: bool,
    ins: &[&ArrayD<T>],
    env: &Env<T>,
) -> Result<Vec<ArrayD<T>>, String> {
    let (c, n) = (carries, xs);
    let steps = ins[c].shape()[0];
    if steps == 0 {
        return Err("scan over a sequence of length 0".into());
    }
    let mut e = Env {
        values: HashMap::new(),
        seed: env.seed,
        step: env.step,
        sizes: env.sizes.clone(),
        row_offset: env.row_offset,
    };
    for (k, v) in ins[c + n..].iter().enumerate() {
        e.values.insert(format!("cap{k}"), (*v).clone());
    }
    let ny = body.outputs.len().saturating_sub(c);
    let names: Vec<String> = (0..c)
        .map(|i| format!("carry{i}"))
        .chain((0..ny).map(|l| format!("y{l}")))
        .collect();
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut carry: Vec<ArrayD<T>> = ins[..c].iter().map(|v| (*v).clone()).collect();
    let mut ys: Vec<Vec<ArrayD<T>>> = vec![Vec::with_capacity(steps); ny];
    for s in 0..steps {
        let t = if reverse { steps - 1 - s } else { s };
        e.step = rng::fold(env.step, t as u64);
        for (i, v) in carry.drain(..).enumerate() {
            e.values.insert(format!("carry{i}"), v);
        }
        for j in 0..n {
            e.values.insert(
                format!("x{j}"),
                ins[c + j].index_axis(Axis(0), t).to_owned(),
            );
        }
        let mut out = run(body, &e, &names)?.into_iter();
        carry = out.by_ref().take(c).collect();
        for y in ys.iter_mut() {
            y.push(out.next().ok_or("scan body gave too few outputs")?);
        }
    }
    let mut result = carry;
    for mut y in ys {
        if reverse {
            y.reverse();
        }
        let views: Vec<_> = y.iter().map(|v| v.view().insert_axis(Axis(0))).collect();
        result.push(ndarray::concatenate(Axis(0), &views).map_err(|e| format!("scan: {e}"))?);
    }
    Ok(result)
}

fn bind(want: &[Dim], got: &[usize], syms: &mut HashMap<String, usize>) -> Result<(), String> {
    let shown = || {
        format!(
            "expected shape {}, got {:?}",
            crate::types::show_shape(want),
            got
        )
    };
    if want.len() != got.len() {
        return Err(shown());
    }
    for (w, &g) in want.iter().zip(got) {
        match w {
            Dim::Known(k) if *k != g => return Err(shown()),
            Dim::Known(_) => {}
            Dim::Sym(s) => match syms.get(s) {
                Some(&prev) if prev != g => {
                    return Err(format!("{}: {s} is {prev} elsewhere", shown()));
                }
                _ => {
                    syms.insert(s.clone(), g);
                }
            },
        }
    }
    Ok(())
}

/// A shape with its symbolic sizes filled in.
pub fn concrete_shape(s: &Shape, syms: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    concrete(s, syms)
}

fn concrete(s: &Shape, syms: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    s.iter()
        .map(|d| match d {
            Dim::Known(k) => Ok(*k),
            Dim::Sym(x) => syms
                .get(x)
                .copied()
                .ok_or_else(|| format!("the size of {x} is not known")),
        })
        .collect()
}

fn unary<T: Real>(x: &ArrayD<T>, f: impl Fn(T) -> T) -> ArrayD<T> {
    x.mapv(f)
}

fn binary<T: Real>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    f: impl Fn(T, T) -> T,
) -> Result<ArrayD<T>, String> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}

fn bool_of<T: Real>(c: bool) -> T {
    if c { T::one() } else { T::zero() }
}

/// max that propagates NaN from either side.
fn nan_max<T: Real>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a >= b {
        a
    } else {
        b
    }
}

fn nan_min<T: Real>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a <= b {
        a
    } else {
        b
    }
}

/// A sum along one axis, accumulated in f64 whatever `T` is: the oracle's f32 sums of
/// millions of terms (a global gradient norm) stay within a few ulps of the exact value.
fn sum_axis<T: Real>(v: &ArrayD<T>, a: Axis) -> ArrayD<T> {
    v.mapv(|x| x.f64()).sum_axis(a).mapv(T::of)
}

fn reduce<T: Real>(
    x: &ArrayD<T>,
    axes: &[usize],
    keep: bool,
    f: impl Fn(&ArrayD<T>, Axis) -> ArrayD<T>,
) -> ArrayD<T> {
    let mut v = x.clone();
    let mut sorted = axes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    for &a in &sorted {
        v = f(&v, Axis(a));
        if keep {
            v.insert_axis_inplace(Axis(a));
        }
    }
    v
}

fn matmul2<T: Real>(a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, String> {
    let a2 = a
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| e.to_string())?;
    let b2 = b
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| e.to_string())?;
    if a2.ncols() != b2.nrows() {
        return Err(format!("matmul of {:?} and {:?}", a.shape(), b.shape()));
    }
    Ok(a2.dot(&b2).into_dyn())
}

fn reshape<T: Real>(x: &ArrayD<T>, shape: Vec<usize>) -> Result<ArrayD<T>, String> {
    let std = x.as_standard_layout().to_owned();
    std.into_shape_with_order(IxDyn(&shape))
        .map_err(|e| format!("reshape {:?} to {shape:?}: {e}", x.shape()))
}

/// What a random op of symbolic shape `shape` adds to its elements' indices at row offset
/// `rows`: the elements of that many rows when its first dimension is the batch `B`.
pub fn row_offset(
    shape: &[crate::types::Dim],
    rows: u64,
    syms: &HashMap<String, usize>,
) -> Result<u64, String> {
    match shape.first() {
        Some(crate::types::Dim::Sym(b)) if b == "B" && rows > 0 => {
            let c = concrete(&shape[1..].to_vec(), syms)?;
            Ok(rows * c.iter().product::<usize>() as u64)
        }
        _ => Ok(0),
    }
}

pub(crate) fn softmax_lane<T: Real>(x: &ArrayD<T>, axis: usize, log: bool) -> ArrayD<T> {
    let mut out = x.clone();
    for mut lane in out.lanes_mut(Axis(axis)) {
        let m = lane.iter().fold(T::neg_infinity(), |a, &b| nan_max(a, b));
        let m = if m.is_infinite() { T::zero() } else { m };
        let s = lane.iter().fold(T::zero(), |a, &b| a + (b - m).exp());
        if log {
            let ls = s.ln();
            lane.mapv_inplace(|v| v - m - ls);
        } else {
            lane.mapv_inplace(|v| (v - m).exp() / s);
        }
    }
    out
}

fn eval_op<T: Real>(
    op: &Op,
    ins: &[&ArrayD<T>],
    syms: &HashMap<String, usize>,
    env: &Env<T>,
    dtype: DType,
) -> Result<ArrayD<T>, String> {
    use Op::*;
    let x = || ins[0];
    Ok(match op {
        Input { .. } | Param { .. } | State { .. } => {
            unreachable!("leaves are bound before evaluation")
        }
        Const { shape, data } => {
            ArrayD::from_shape_vec(IxDyn(shape), data.iter().map(|v| T::of(v.get())).collect())
                .map_err(|e| e.to_string())?
        }
        Random { key, dist, shape } => {
            let off = row_offset(shape, env.row_offset, syms)?;
            let shape = concrete(shape, syms)?;
            let n: usize = shape.iter().product();
            let draw = |i: usize| match dist {
                Dist::Uniform => rng::uniform(env.seed, *key as u64, env.step, i as u64 + off),
                Dist::Normal => rng::normal(env.seed, *key as u64, env.step, i as u64 + off),
            };
            ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| T::of(draw(i))).collect())
                .map_err(|e| e.to_string())?
        }
        Neg => unary(x(), |v| -v),
        Exp => unary(x(), |v| v.exp()),
        Log => unary(x(), |v| v.ln()),
        Sqrt => unary(x(), |v| v.sqrt()),
        Tanh => unary(x(), |v| v.tanh()),
        Sigmoid => unary(x(), |v| {
            // Stable on both tails.
            if v >= T::zero() {
                T::one() / (T::one() + (-v).exp())
            } else {
                let e = v.exp();
                e / (T::one() + e)
            }
        }),
        Relu => unary(x(), |v| {
            if v > T::zero() || v.is_nan() {
                v
            } else {
                T::zero()
            }
        }),
        Abs => unary(x(), |v| v.abs()),
        Sign => unary(x(), |v| {
            if v.is_nan() {
                v
            } else if v > T::zero() {
                T::one()
            } else if v < T::zero() {
                -T::one()
            } else {
                T::zero()
            }
        }),
        StopGradient => x().clone(),
        Cast(t) => match t {
            DType::F32 => x().clone(),
            DType::I32 => unary(x(), |v| v.trunc()),
        },
        Add => binary(ins[0], ins[1], |a, b| a + b)?,
        Sub => binary(ins[0], ins[1], |a, b| a - b)?,
        Mul => binary(ins[0], ins[1], |a, b| a * b)?,
        Div => {
            if dtype == DType::I32 {
                binary(ins[0], ins[1], |a, b| (a / b).trunc())?
            } else {
                binary(ins[0], ins[1], |a, b| a / b)?
            }
        }
        Pow => binary(ins[0], ins[1], |a, b| a.powf(b))?,
        Maximum => binary(ins[0], ins[1], nan_max)?,
        Minimum => binary(ins[0], ins[1], nan_min)?,
        Lt => binary(ins[0], ins[1], |a, b| bool_of(a < b))?,
        Le => binary(ins[0], ins[1], |a, b| bool_of(a <= b))?,
        Gt => binary(ins[0], ins[1], |a, b| bool_of(a > b))?,
        Ge => binary(ins[0], ins[1], |a, b| bool_of(a >= b))?,
        Eq => binary(ins[0], ins[1], |a, b| bool_of(a == b))?,
        Ne => binary(ins[0], ins[1], |a, b| bool_of(a != b))?,
        Select => {
            let s1 = broadcast_shape(ins[0].shape(), ins[1].shape())?;
            let shape = broadcast_shape(&s1, ins[2].shape())?;
            let c = ins[0].broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
            let a = ins[1].broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
            let b = ins[2].broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
            Zip::from(&c)
                .and(&a)
                .and(&b)
                .map_collect(|&c, &a, &b| if c != T::zero() { a } else { b })
        }
        Sum { axes, keep } => reduce(x(), axes, *keep, sum_axis),
        Mean { axes, keep } => {
            let n: usize = axes.iter().map(|&a| x().shape()[a]).product();
            let s = reduce(x(), axes, *keep, sum_axis);
            s.mapv(|v| v / T::of(n as f64))
        }
        Max { axes, keep } => reduce(x(), axes, *keep, |v, a| {
            v.fold_axis(a, T::neg_infinity(), |&m, &e| nan_max(m, e))
        }),
        ArgMax { axis } => x().map_axis(Axis(*axis), |lane| {
            let mut best = 0usize;
            for (i, &v) in lane.iter().enumerate() {
                if v.is_nan() {
                    return T::of(i as f64);
                }
                if v > lane[best] {
                    best = i;
                }
            }
            T::of(best as f64)
        }),
        Softmax { axis } => softmax_lane(x(), *axis, false),
        LogSoftmax { axis } => softmax_lane(x(), *axis, true),
        Reshape { shape } => reshape(x(), concrete(shape, syms)?)?,
        Transpose { perm } => x()
            .clone()
            .permuted_axes(IxDyn(perm))
            .as_standard_layout()
            .to_owned(),
        Broadcast { shape } => {
            let s = concrete(shape, syms)?;
            x().broadcast(IxDyn(&s))
                .ok_or_else(|| format!("cannot broadcast {:?} to {s:?}", x().shape()))?
                .to_owned()
        }
        SumTo { shape } => {
            let target = concrete(shape, syms)?;
            let mut v = x().clone();
            while v.ndim() > target.len() {
                v = sum_axis(&v, Axis(0));
            }
            for (i, &t) in target.iter().enumerate() {
                if t == 1 && v.shape()[i] != 1 {
                    v = sum_axis(&v, Axis(i)).insert_axis(Axis(i));
                }
            }
            v
        }
        Concat { axis } => {
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(*axis), &views).map_err(|e| e.to_string())?
        }
        Slice {
            axis,
            start,
            end,
            step,
        } => x()
            .slice_axis(
                Axis(*axis),
                ndarray::Slice::new(*start as isize, Some(*end as isize), *step as isize),
            )
            .to_owned(),
        Gather => {
            let (table, idx) = (ins[0], ins[1]);
            let rows = table.shape()[0];
            let mut picks = Vec::with_capacity(idx.len());
            for &i in idx.iter() {
                let f = i.f64();
                if !(f >= 0.0 && (f as usize) < rows) {
                    return Err(format!(
                        "gather index {f} is out of range for a table of {rows} rows"
                    ));
                }
                picks.push(f as usize);
            }
            let sel = table.select(Axis(0), &picks);
            let mut shape = idx.shape().to_vec();
            shape.extend_from_slice(&table.shape()[1..]);
            reshape(&sel, shape)?
        }
        ScatterAdd { rows } => {
            let (idx, g) = (ins[0], ins[1]);
            let rest: Vec<usize> = g.shape()[idx.ndim()..].to_vec();
            let width: usize = rest.iter().product();
            let mut shape = vec![*rows];
            shape.extend(&rest);
            let mut out = ArrayD::<T>::zeros(IxDyn(&shape));
            let gs = g.as_standard_layout();
            let gflat = gs.as_slice().ok_or("scatter_add: layout")?;
            let oflat = out.as_slice_mut().ok_or("scatter_add: layout")?;
            for (k, &i) in idx.iter().enumerate() {
                let r = i.f64() as usize;
                if r >= *rows {
                    return Err(format!(
                        "scatter_add index {r} is out of range for {rows} rows"
                    ));
                }
                for j in 0..width {
                    oflat[r * width + j] = oflat[r * width + j] + gflat[k * width + j];
                }
            }
            out
        }
        Knn { k } => {
            let p: Vec<f32> = ins[0].iter().map(|v| v.f64() as f32).collect();
            let s = ins[0].shape();
            let mut out = vec![0.0f32; s[0] * s[1] * k];
            crate::sparse::knn(&p, s[0], s[1], s[2], *k, &mut out);
            ArrayD::from_shape_vec(
                IxDyn(&[s[0], s[1], *k]),
                out.into_iter().map(|v| T::of(v as f64)).collect(),
            )
            .map_err(|e| e.to_string())?
        }
        GatherPoints => {
            let (h, idx) = (ins[0], ins[1]);
            let (b, n, c) = (h.shape()[0], h.shape()[1], h.shape()[2]);
            let hs = h.as_standard_layout();
            let hs = hs.as_slice().ok_or("gather_points: layout")?;
            let per = idx.len() / b.max(1);
            let mut out = Vec::with_capacity(idx.len() * c);
            for (q, &i) in idx.iter().enumerate() {
                let j = i.f64();
                if !(j >= 0.0 && (j as usize) < n) {
                    return Err(format!(
                        "gather_points index {j} is out of range for sets of {n} points"
                    ));
                }
                let row = (q / per) * n + j as usize;
                out.extend_from_slice(&hs[row * c..(row + 1) * c]);
            }
            let mut shape = idx.shape().to_vec();
            shape.push(c);
            ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?
        }
        ScatterPoints { points } => {
            let (idx, g) = (ins[0], ins[1]);
            let (b, c) = (idx.shape()[0], g.shape()[3]);
            let gs = g.as_standard_layout();
            let gs = gs.as_slice().ok_or("scatter_points: layout")?;
            let per = idx.len() / b.max(1);
            let mut out = ArrayD::<T>::zeros(IxDyn(&[b, *points, c]));
            let o = out.as_slice_mut().ok_or("scatter_points: layout")?;
            for (q, &i) in idx.iter().enumerate() {
                let row = (q / per) * points + i.f64() as usize;
                for j in 0..c {
                    o[row * c + j] = o[row * c + j] + gs[q * c + j];
                }
            }
            out
        }
        SpMM | SpMMT => {
            let csr = crate::sparse::Csr::of(
                ins[0].iter().map(|v| v.f64()),
                ins[1].iter().map(|v| v.f64()),
                ins[2].len(),
                ins[3].shape()[0],
            )?;
            let h = ins[3];
            let vals: Vec<T> = ins[2].iter().copied().collect();
            let mut out = ArrayD::<T>::zeros(h.raw_dim());
            let f = h.shape()[1];
            let hs = h.as_standard_layout();
            let hs = hs.as_slice().ok_or("spmm: layout")?;
            let o = out.as_slice_mut().ok_or("spmm: layout")?;
            for r in 0..csr.rows {
                for k in csr.indptr[r]..csr.indptr[r + 1] {
                    let (c, v) = (csr.indices[k], vals[k]);
                    let (dst, src) = if matches!(op, SpMM) { (r, c) } else { (c, r) };
                    for j in 0..f {
                        o[dst * f + j] = o[dst * f + j] + v * hs[src * f + j];
                    }
                }
            }
            out
        }
        OneHot { depth } => {
            let mut shape = x().shape().to_vec();
            shape.push(*depth);
            let mut out = ArrayD::<T>::zeros(IxDyn(&shape));
            let flat = out.as_slice_mut().ok_or("one_hot: layout")?;
            for (k, &v) in x().iter().enumerate() {
                let f = v.f64();
                if f >= 0.0 && (f as usize) < *depth {
                    flat[k * depth + f as usize] = T::one();
                }
            }
            out
        }
        ContractLeading => {
            let flat = |x: &ArrayD<T>| {
                let k = x.shape()[x.ndim() - 1];
                reshape(x, vec![x.len() / k.max(1), k])
            };
            let (a, g) = (flat(ins[0])?, flat(ins[1])?);
            matmul2(&a.t().to_owned().into_dyn(), &g)?
        }
        MatMul { ta, tb } => {
            let swap = |x: &ArrayD<T>, on: bool| {
                if !on {
                    return x.clone();
                }
                let r = x.ndim();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                x.clone()
                    .permuted_axes(IxDyn(&perm))
                    .as_standard_layout()
                    .to_owned()
            };
            let (a, b) = (&swap(ins[0], *ta), &swap(ins[1], *tb));
            if a.ndim() == 2 && b.ndim() == 2 {
                matmul2(a, b)?
            } else if b.ndim() == 2 {
                let k = a.shape()[a.ndim() - 1];
                let lead: Vec<usize> = a.shape()[..a.ndim() - 1].to_vec();
                let rows: usize = lead.iter().product();
                let flat = reshape(a, vec![rows, k])?;
                let out = matmul2(&flat, b)?;
                let mut shape = lead;
                shape.push(b.shape()[1]);
                reshape(&out, shape)?
            } else {
                let nb = a.ndim() - 2;
                let batch: usize = a.shape()[..nb].iter().product();
                let (m, k, n) = (a.shape()[nb], a.shape()[nb + 1], b.shape()[nb + 1]);
                let a3 = reshape(a, vec![batch, m, k])?;
                let b3 = reshape(b, vec![batch, k, n])?;
                let mut outs = Vec::with_capacity(batch);
                for i in 0..batch {
                    let ai = a3.index_axis(Axis(0), i).to_owned().into_dyn();
                    let bi = b3.index_axis(Axis(0), i).to_owned().into_dyn();
                    outs.push(matmul2(&ai, &bi)?);
                }
                let views: Vec<_> = outs.iter().map(|o| o.view().insert_axis(Axis(0))).collect();
                let stacked = ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?;
                let mut shape = a.shape()[..nb].to_vec();
                shape.extend([m, n]);
                reshape(&stacked, shape)?
            }
        }
        Conv2d { geo } => window::conv2d(ins[0], ins[1], geo)?,
        Conv2dBackInput { geo, input } => window::conv2d_back_input(ins[0], ins[1], geo, *input)?,
        Conv2dBackFilter { geo } => window::conv2d_back_filter(ins[0], ins[1], geo)?,
        MaxPool2d { geo } => window::max_pool(x(), geo)?,
        MaxPool2dBack { geo } => window::max_pool_back(ins[0], ins[1], geo)?,
        AvgPool2d { geo } => window::avg_pool(x(), geo)?,
        AvgPool2dBack { geo, input } => window::avg_pool_back(x(), geo, *input)?,
        Scan { .. } | Fused { .. } => {
            return Err(
                "internal: scan and kernels are evaluated by run_nodes, which has the bodies"
                    .into(),
            );
        }
        Vjp(_) => {
            return Err(
                "internal: an unresolved gradient placeholder reached the interpreter".into(),
            );
        }
    })
}
