//! The op table: every IR op, declared once. Each op has a name, its attributes, an arity
//! and a shape rule here; its reference semantics are in `interp.rs` and its VJP rule in
//! `autodiff/rules.rs`. All three are exhaustive `match`es on [`Op`], so adding an op
//! fails to compile until every layer handles it.

use crate::types::{DType, Dim, Shape, Type, broadcast, broadcasts_to, show_shape};
use crate::window::Geometry;
use std::fmt;

/// An f64 stored by its bits, so ops can be hashed and compared (for egg).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct F64(pub u64);

impl F64 {
    pub fn new(v: f64) -> F64 {
        // One NaN and one zero, so equal constants hash equally.
        let v = if v.is_nan() {
            f64::NAN
        } else if v == 0.0 {
            0.0
        } else {
            v
        };
        F64(v.to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for F64 {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Distributions of in-graph randomness (counter-based: see `rng.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dist {
    /// Uniform on [0, 1).
    Uniform,
    /// Standard normal.
    Normal,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    // ---- leaves -------------------------------------------------------------
    /// A value supplied by the caller each run (data `x`, labels `y`, the step counter).
    Input {
        name: String,
        ty: TypeKey,
    },
    /// A trainable parameter.
    Param {
        name: String,
        ty: TypeKey,
    },
    /// Persistent state that is not trained directly (optimizer moments).
    State {
        name: String,
        ty: TypeKey,
    },
    /// A literal tensor (a scalar when `shape` is empty).
    Const {
        shape: Vec<usize>,
        data: Vec<F64>,
    },
    /// Random numbers drawn from (seed, key, step, element index).
    Random {
        key: u32,
        dist: Dist,
        shape: Shape,
    },

    // ---- elementwise, one input ----------------------------------------------
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Relu,
    Abs,
    Sign,
    /// Identity in the forward pass; blocks gradients.
    StopGradient,
    /// Convert to another dtype (i32 ↔ f32).
    Cast(DType),

    // ---- elementwise, two inputs (numpy broadcasting) ------------------------
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
    /// Comparisons give 1.0 or 0.0.
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    /// `select(c, a, b)`: a where c ≠ 0, else b (three inputs, broadcast).
    Select,

    // ---- reductions --------------------------------------------------------
    Sum {
        axes: Vec<usize>,
        keep: bool,
    },
    Mean {
        axes: Vec<usize>,
        keep: bool,
    },
    Max {
        axes: Vec<usize>,
        keep: bool,
    },
    ArgMax {
        axis: usize,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },

    // ---- layout ------------------------------------------------------------
    Reshape {
        shape: Shape,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// Broadcast to a shape (the input broadcasts to it by numpy rules).
    Broadcast {
        shape: Shape,
    },
    /// Sum a broadcast value back down to `shape`: undoes broadcasting in gradients.
    SumTo {
        shape: Shape,
    },
    Concat {
        axis: usize,
    },
    Slice {
        axis: usize,
        start: usize,
        end: usize,
        step: usize,
    },
    /// `gather(table, idx)`: rows of `table` (axis 0) picked by integer `idx`.
    Gather,
    /// `scatter_add(idx, g)` into `rows` rows: the gradient of `gather`.
    ScatterAdd {
        rows: usize,
    },
    OneHot {
        depth: usize,
    },
    /// `spmm(indptr, indices, values, h)`: a square sparse matrix in CSR form (row `r`'s
    /// entries are `values[indptr[r]..indptr[r+1]]` in columns `indices[…]`) times a dense
    /// [rows, F] matrix: out[r] = Σ values[k]·h[indices[k]].
    SpMM,
    /// The same matrix transposed times a dense matrix (the gradient of `spmm` with respect
    /// to `h`): out[indices[k]] += values[k]·g[r] over the rows `r` in order.
    SpMMT,
    /// `knn(points, k)`: for each point of each set of `points` [B, N, C], the indices
    /// [B, N, k] of its `k` nearest points of the same set (itself first) by squared
    /// Euclidean distance; ties broken by the points' vectors (lexicographically), then by
    /// index, so the neighbours do not depend on the order of the points.
    Knn {
        k: usize,
    },
    /// `gather_points(h, idx)`: rows of each set of `h` [B, N, C] picked by `idx`
    /// [B, M, K] (indices into the same set): [B, M, K, C].
    GatherPoints,
    /// The gradient of `gather_points` into sets of `points` rows: [B, points, C].
    ScatterPoints {
        points: usize,
    },

    // ---- contraction -------------------------------------------------------
    /// `[.., M, K] @ [.., K, N]`; batch dims equal, or a 2-D right-hand side. `ta`/`tb`
    /// read an operand with its last two axes swapped (transposes folded in).
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `(a [L…, K], g [L…, N]) → [K, N]`: Σ over the leading axes L of aᵀg (the gradient of
    /// the matrix of a product `[L…, K] @ [K, N]`, as one product over all leading rows).
    ContractLeading,

    // ---- windows over the spatial axes of NHWC values (`window.rs`) ----------
    /// `conv2d(x, w)`: x [B, H, W, C], w [KH, KW, C, F] → [B, H', W', F];
    /// cross-correlation, `geo.size` = [KH, KW].
    Conv2d {
        geo: Geometry,
    },
    /// The gradient of `conv2d` with respect to its input: (g, w) → [B, H, W, C], for
    /// an input of `input` = [H, W].
    Conv2dBackInput {
        geo: Geometry,
        input: [usize; 2],
    },
    /// The gradient of `conv2d` with respect to its filter: (x, g) → [KH, KW, C, F].
    Conv2dBackFilter {
        geo: Geometry,
    },
    /// The maximum of each window, per channel.
    MaxPool2d {
        geo: Geometry,
    },
    /// The gradient of `maxpool2d`: (x, g) → the shape of x; each window's gradient goes
    /// to its first maximum.
    MaxPool2dBack {
        geo: Geometry,
    },
    /// The mean of each window, per channel.
    AvgPool2d {
        geo: Geometry,
    },
    /// The gradient of `avgpool2d`: (g) → [B, H, W, C] for an input of `input` = [H, W].
    AvgPool2dBack {
        geo: Geometry,
        input: [usize; 2],
    },

    // ---- control flow --------------------------------------------------------
    /// Output `output` of a scan: the body graph `body` (in `Graph::bodies`) runs once per
    /// step t of the time-major operands, threading carries. Operands: `carries` initial
    /// carries, then `xs` scanned values [T, …] (the body sees step t's slice), then the
    /// captured values (parameters and other loop invariants, as they are). The body has
    /// inputs `carry{i}`, `x{j}`, `cap{k}` and outputs `carry{i}`, then `y{l}`. Outputs
    /// `0..carries` are the final carries; the others the stacked `y`s [T, …]. With
    /// `reverse`, steps run from T−1 down to 0 (step t still reads and writes index t).
    /// Random draws in the body fold the step index into their stream
    /// ([`crate::rng::fold`]). All outputs of one scan share its operands and one run.
    Scan {
        body: u32,
        output: u32,
        carries: u32,
        xs: u32,
        reverse: bool,
        out: TypeKey,
    },

    // ---- kernels (made by the optimizer's fusion phase) -------------------
    /// Output `output` of fused kernel `body` (in `Graph::bodies`): the body graph has
    /// inputs `in0…` (this node's operands, in order) and outputs `out0…`. All outputs
    /// of one kernel share its operands and are computed by one launch.
    Fused {
        body: u32,
        output: u32,
        kind: KernelKind,
        out: TypeKey,
    },

    // ---- autodiff placeholder ---------------------------------------------
    /// `vjp_i(node, g)`: the gradient flowing to input `i` of `node` given its adjoint
    /// `g`. Only exists inside the `grad` phase; rules rewrite it into primitive ops.
    Vjp(usize),
}

/// What a fused kernel does, in XLA's terms; the JIT picks a code template by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// Elementwise ops only (loop fusion).
    Loop,
    /// A reduction with its elementwise producers (input fusion).
    Reduce,
    /// A matmul with its elementwise epilogue (output fusion).
    MatMul,
    /// log-softmax, the cross-entropy loss and its gradient.
    SoftmaxXent,
    /// The optimizer update of every parameter (multi-output loop).
    Update,
    /// Data movement: transpose, concat, slice, gather, scatter.
    Copy,
    /// A convolution or pooling op (or one of their gradients) with its elementwise
    /// epilogue (bias, activation, the backward ReLU mask).
    Window,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Loop => "loop",
            KernelKind::Reduce => "reduce",
            KernelKind::MatMul => "matmul",
            KernelKind::SoftmaxXent => "softmax_xent",
            KernelKind::Update => "update",
            KernelKind::Copy => "copy",
            KernelKind::Window => "window",
        }
    }
}

/// A `Type` stored inside an op (inputs and parameters declare theirs).
pub type TypeKey = (DType, Shape);

/// Why a shape rule rejected its inputs.
pub type ShapeError = String;

impl Op {
    /// The op's name as printed in the IR and used in rewrite patterns.
    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            Input { .. } => "input",
            Param { .. } => "param",
            State { .. } => "state",
            Const { .. } => "const",
            Random { .. } => "random",
            Neg => "neg",
            Exp => "exp",
            Log => "log",
            Sqrt => "sqrt",
            Tanh => "tanh",
            Sigmoid => "sigmoid",
            Relu => "relu",
            Abs => "abs",
            Sign => "sign",
            StopGradient => "stop_gradient",
            Cast(_) => "cast",
            Add => "add",
            Sub => "sub",
            Mul => "mul",
            Div => "div",
            Pow => "pow",
            Maximum => "maximum",
            Minimum => "minimum",
            Lt => "lt",
            Le => "le",
            Gt => "gt",
            Ge => "ge",
            Eq => "eq",
            Ne => "ne",
            Select => "select",
            Sum { .. } => "sum",
            Mean { .. } => "mean",
            Max { .. } => "max",
            ArgMax { .. } => "argmax",
            Softmax { .. } => "softmax",
            LogSoftmax { .. } => "log_softmax",
            Reshape { .. } => "reshape",
            Transpose { .. } => "transpose",
            Broadcast { .. } => "broadcast",
            SumTo { .. } => "sum_to",
            Concat { .. } => "concat",
            Slice { .. } => "slice",
            Gather => "gather",
            ScatterAdd { .. } => "scatter_add",
            OneHot { .. } => "one_hot",
            SpMM => "spmm",
            SpMMT => "spmm_t",
            Knn { .. } => "knn",
            GatherPoints => "gather_points",
            ScatterPoints { .. } => "scatter_points",
            MatMul { .. } => "matmul",
            ContractLeading => "contract_leading",
            Conv2d { .. } => "conv2d",
            Conv2dBackInput { .. } => "conv2d_back_input",
            Conv2dBackFilter { .. } => "conv2d_back_filter",
            MaxPool2d { .. } => "maxpool2d",
            MaxPool2dBack { .. } => "maxpool2d_back",
            AvgPool2d { .. } => "avgpool2d",
            AvgPool2dBack { .. } => "avgpool2d_back",
            Scan { .. } => "scan",
            Fused { .. } => "fused",
            Vjp(_) => "vjp",
        }
    }

    /// Attributes in canonical text form (empty when the op has none).
    pub fn attrs(&self) -> String {
        use Op::*;
        let axes = |a: &[usize], keep: bool| {
            let s: Vec<String> = a.iter().map(|x| x.to_string()).collect();
            format!("axes=[{}]{}", s.join(","), if keep { ", keep" } else { "" })
        };
        match self {
            Input { name, ty } | Param { name, ty } | State { name, ty } => {
                format!(
                    "{name}: {}",
                    Type {
                        dtype: ty.0,
                        shape: ty.1.clone()
                    }
                )
            }
            Const { shape, data } => {
                if data.len() == 1 && shape.is_empty() {
                    fmt_num(data[0].get())
                } else {
                    let vals: Vec<String> = data.iter().take(8).map(|v| fmt_num(v.get())).collect();
                    let more = if data.len() > 8 { ", …" } else { "" };
                    format!("{:?} [{}{}]", shape, vals.join(", "), more)
                }
            }
            Random { key, dist, shape } => {
                format!("{dist:?}, key={key}, shape={}", show_shape(shape))
            }
            Cast(t) => t.to_string(),
            Sum { axes: a, keep } | Mean { axes: a, keep } | Max { axes: a, keep } => {
                axes(a, *keep)
            }
            ArgMax { axis } | Softmax { axis } | LogSoftmax { axis } | Concat { axis } => {
                format!("axis={axis}")
            }
            Reshape { shape } | Broadcast { shape } | SumTo { shape } => show_shape(shape),
            Transpose { perm } => format!("perm={perm:?}"),
            Slice {
                axis,
                start,
                end,
                step,
            } => format!("axis={axis}, {start}:{end}:{step}"),
            ScatterAdd { rows } => format!("rows={rows}"),
            Conv2d { geo }
            | Conv2dBackFilter { geo }
            | MaxPool2d { geo }
            | MaxPool2dBack { geo }
            | AvgPool2d { geo } => geo.show(),
            Conv2dBackInput { geo, input } | AvgPool2dBack { geo, input } => {
                format!("{}, input={}x{}", geo.show(), input[0], input[1])
            }
            Knn { k } => format!("k={k}"),
            ScatterPoints { points } => format!("points={points}"),
            OneHot { depth } => format!("depth={depth}"),
            Scan {
                body,
                output,
                carries,
                xs,
                reverse,
                ..
            } => format!(
                "body={body}, out={output}, carries={carries}, xs={xs}{}",
                if *reverse { ", reverse=true" } else { "" }
            ),
            Fused {
                body, output, kind, ..
            } => format!("{}, body={body}, out={output}", kind.name()),
            Vjp(i) => format!("{i}"),
            MatMul { ta, tb } => match (ta, tb) {
                (false, false) => String::new(),
                (true, false) => "ta".into(),
                (false, true) => "tb".into(),
                (true, true) => "ta, tb".into(),
            },
            _ => String::new(),
        }
    }

    /// Ops without attributes, by name: the vocabulary of rewrite patterns.
    pub fn from_name(name: &str) -> Option<Op> {
        use Op::*;
        Some(match name {
            "neg" => Neg,
            "exp" => Exp,
            "log" => Log,
            "sqrt" => Sqrt,
            "tanh" => Tanh,
            "sigmoid" => Sigmoid,
            "relu" => Relu,
            "abs" => Abs,
            "sign" => Sign,
            "stop_gradient" => StopGradient,
            "add" => Add,
            "sub" => Sub,
            "mul" => Mul,
            "div" => Div,
            "pow" => Pow,
            "maximum" => Maximum,
            "minimum" => Minimum,
            "lt" => Lt,
            "le" => Le,
            "gt" => Gt,
            "ge" => Ge,
            "eq" => Eq,
            "ne" => Ne,
            "select" => Select,
            "gather" => Gather,
            "spmm" => SpMM,
            "spmm_t" => SpMMT,
            "gather_points" => GatherPoints,
            "matmul" => MatMul {
                ta: false,
                tb: false,
            },
            _ => {
                let i = name.strip_prefix("vjp")?.parse().ok()?;
                Vjp(i)
            }
        })
    }

    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. }
                | Op::Param { .. }
                | Op::State { .. }
                | Op::Const { .. }
                | Op::Random { .. }
        )
    }

    pub fn is_elementwise_binary(&self) -> bool {
        use Op::*;
        matches!(
            self,
            Add | Sub | Mul | Div | Pow | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne
        )
    }

    /// A scalar constant, if this op is one.
    pub fn scalar_value(&self) -> Option<f64> {
        match self {
            Op::Const { shape, data } if shape.is_empty() && data.len() == 1 => Some(data[0].get()),
            _ => None,
        }
    }

    /// Whether the op reduces along axes (its output element reads many input elements):
    /// the JIT's staged and row kernels cut bodies at these.
    pub fn is_reduction(&self) -> bool {
        matches!(
            self,
            Op::Sum { .. }
                | Op::Mean { .. }
                | Op::Max { .. }
                | Op::ArgMax { .. }
                | Op::SumTo { .. }
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
        )
    }

    /// Whether the op slides windows over the spatial axes of NHWC values: convolution,
    /// pooling and their gradients (`window.rs`; the JIT's `conv.rs`).
    pub fn is_window(&self) -> bool {
        matches!(
            self,
            Op::Conv2d { .. }
                | Op::Conv2dBackInput { .. }
                | Op::Conv2dBackFilter { .. }
                | Op::MaxPool2d { .. }
                | Op::MaxPool2dBack { .. }
                | Op::AvgPool2d { .. }
                | Op::AvgPool2dBack { .. }
        )
    }

    /// A plain matmul (no transposed operand).
    pub fn matmul() -> Op {
        Op::MatMul {
            ta: false,
            tb: false,
        }
    }

    pub fn scalar(v: f64) -> Op {
        Op::Const {
            shape: vec![],
            data: vec![F64::new(v)],
        }
    }

    /// The shape rule: the output type given the input types, or why they do not fit.
    pub fn infer(&self, ins: &[&Type]) -> Result<Type, ShapeError> {
        use Op::*;
        let arity = |n: usize| -> Result<(), ShapeError> {
            if ins.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "`{}` takes {n} input(s), got {}",
                    self.name(),
                    ins.len()
                ))
            }
        };
        let float = |t: &Type| -> Result<(), ShapeError> {
            if t.dtype == DType::F32 {
                Ok(())
            } else {
                Err(format!("`{}` needs f32 values, got {t}", self.name()))
            }
        };
        let axes_ok = |axes: &[usize], rank: usize| -> Result<(), ShapeError> {
            match axes.iter().find(|&&a| a >= rank) {
                Some(a) => Err(format!("axis {a} is out of range for a rank-{rank} tensor")),
                None => Ok(()),
            }
        };
        match self {
            Input { ty, .. } | Param { ty, .. } | State { ty, .. } => {
                arity(0)?;
                Ok(Type {
                    dtype: ty.0,
                    shape: ty.1.clone(),
                })
            }
            Const { shape, data } => {
                arity(0)?;
                if shape.iter().product::<usize>() != data.len() {
                    return Err(format!(
                        "constant of shape {shape:?} has {} values",
                        data.len()
                    ));
                }
                Ok(Type::f32(crate::types::shape_of(shape)))
            }
            Random { shape, .. } => {
                arity(0)?;
                Ok(Type::f32(shape.clone()))
            }
            Neg | Exp | Log | Sqrt | Tanh | Sigmoid | Relu | Abs | Sign => {
                arity(1)?;
                float(ins[0])?;
                Ok(ins[0].clone())
            }
            StopGradient => {
                arity(1)?;
                Ok(ins[0].clone())
            }
            Cast(t) => {
                arity(1)?;
                Ok(Type {
                    dtype: *t,
                    shape: ins[0].shape.clone(),
                })
            }
            Add | Sub | Mul | Div | Pow | Maximum | Minimum | Lt | Le | Gt | Ge | Eq | Ne => {
                arity(2)?;
                if ins[0].dtype != ins[1].dtype {
                    return Err(format!(
                        "`{}` of {} and {}: dtypes differ",
                        self.name(),
                        ins[0],
                        ins[1]
                    ));
                }
                let shape = broadcast(&ins[0].shape, &ins[1].shape).ok_or_else(|| {
                    format!(
                        "shapes {} and {} do not broadcast",
                        show_shape(&ins[0].shape),
                        show_shape(&ins[1].shape)
                    )
                })?;
                let dtype = if matches!(self, Lt | Le | Gt | Ge | Eq | Ne) {
                    DType::F32
                } else {
                    ins[0].dtype
                };
                Ok(Type { dtype, shape })
            }
            Select => {
                arity(3)?;
                let s = broadcast(&ins[0].shape, &ins[1].shape)
                    .and_then(|s| broadcast(&s, &ins[2].shape))
                    .ok_or_else(|| "select: shapes do not broadcast".to_string())?;
                Ok(Type {
                    dtype: ins[1].dtype,
                    shape: s,
                })
            }
            Sum { axes, keep } | Mean { axes, keep } | Max { axes, keep } => {
                arity(1)?;
                axes_ok(axes, ins[0].rank())?;
                let mut shape = Vec::new();
                for (i, d) in ins[0].shape.iter().enumerate() {
                    if !axes.contains(&i) {
                        shape.push(d.clone());
                    } else if *keep {
                        shape.push(Dim::Known(1));
                    }
                }
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape,
                })
            }
            ArgMax { axis } => {
                arity(1)?;
                axes_ok(&[*axis], ins[0].rank())?;
                let mut shape = ins[0].shape.clone();
                shape.remove(*axis);
                Ok(Type {
                    dtype: DType::I32,
                    shape,
                })
            }
            Softmax { axis } | LogSoftmax { axis } => {
                arity(1)?;
                float(ins[0])?;
                axes_ok(&[*axis], ins[0].rank())?;
                Ok(ins[0].clone())
            }
            Reshape { shape } => {
                arity(1)?;
                if !same_size(&ins[0].shape, shape) {
                    return Err(format!(
                        "cannot reshape {} into {}",
                        show_shape(&ins[0].shape),
                        show_shape(shape)
                    ));
                }
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape: shape.clone(),
                })
            }
            Transpose { perm } => {
                arity(1)?;
                let mut sorted = perm.clone();
                sorted.sort();
                if sorted != (0..ins[0].rank()).collect::<Vec<_>>() {
                    return Err(format!(
                        "{perm:?} is not a permutation of the axes of {}",
                        ins[0]
                    ));
                }
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape: perm.iter().map(|&p| ins[0].shape[p].clone()).collect(),
                })
            }
            Broadcast { shape } => {
                arity(1)?;
                if !broadcasts_to(&ins[0].shape, shape) {
                    return Err(format!(
                        "{} does not broadcast to {}",
                        show_shape(&ins[0].shape),
                        show_shape(shape)
                    ));
                }
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape: shape.clone(),
                })
            }
            SumTo { shape } => {
                arity(1)?;
                if !broadcasts_to(shape, &ins[0].shape) {
                    return Err(format!(
                        "cannot sum {} down to {}",
                        show_shape(&ins[0].shape),
                        show_shape(shape)
                    ));
                }
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape: shape.clone(),
                })
            }
            Concat { axis } => {
                if ins.is_empty() {
                    return Err("concat needs at least one input".into());
                }
                let first = ins[0];
                axes_ok(&[*axis], first.rank())?;
                let mut total = 0usize;
                let mut sym = None;
                for t in ins {
                    if t.rank() != first.rank() || t.dtype != first.dtype {
                        return Err(format!(
                            "concat of {} and {}: ranks or dtypes differ",
                            first, t
                        ));
                    }
                    for (i, (a, b)) in t.shape.iter().zip(&first.shape).enumerate() {
                        if i != *axis && a != b {
                            return Err(format!(
                                "concat along axis {axis}: {} and {} differ on axis {i}",
                                first, t
                            ));
                        }
                    }
                    match &t.shape[*axis] {
                        Dim::Known(n) => total += n,
                        d => sym = Some(d.clone()),
                    }
                }
                if sym.is_some() {
                    return Err(format!(
                        "concat along axis {axis}: a symbolic dimension cannot be concatenated"
                    ));
                }
                let mut shape = first.shape.clone();
                shape[*axis] = Dim::Known(total);
                Ok(Type {
                    dtype: first.dtype,
                    shape,
                })
            }
            Slice {
                axis,
                start,
                end,
                step,
            } => {
                arity(1)?;
                axes_ok(&[*axis], ins[0].rank())?;
                let n = ins[0].shape[*axis].known().ok_or_else(|| {
                    format!("cannot slice the symbolic axis {axis} of {}", ins[0])
                })?;
                if *step == 0 || start > end || *end > n {
                    return Err(format!(
                        "slice {start}:{end}:{step} is out of range for axis {axis} of size {n}"
                    ));
                }
                let mut shape = ins[0].shape.clone();
                shape[*axis] = Dim::Known((end - start).div_ceil(*step));
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape,
                })
            }
            Gather => {
                arity(2)?;
                if ins[1].dtype != DType::I32 {
                    return Err(format!("gather indices must be i32, got {}", ins[1]));
                }
                if ins[0].rank() == 0 {
                    return Err("gather needs a table of rank ≥ 1".into());
                }
                let mut shape = ins[1].shape.clone();
                shape.extend(ins[0].shape[1..].iter().cloned());
                Ok(Type {
                    dtype: ins[0].dtype,
                    shape,
                })
            }
            ScatterAdd { rows } => {
                arity(2)?;
                let k = ins[0].rank();
                if ins[1].rank() < k || ins[1].shape[..k] != ins[0].shape[..] {
                    return Err(format!(
                        "scatter_add: indices {} do not lead the values {}",
                        ins[0], ins[1]
                    ));
                }
                let mut shape = vec![Dim::Known(*rows)];
                shape.extend(ins[1].shape[k..].iter().cloned());
                Ok(Type {
                    dtype: ins[1].dtype,
                    shape,
                })
            }
            Knn { k } => {
                arity(1)?;
                let t = &ins[0];
                if t.rank() != 3 || t.dtype != DType::F32 {
                    return Err(format!("knn takes f32 point sets [B, N, C], got {t}"));
                }
                if let Some(n) = t.shape[1].known()
                    && *k > n
                {
                    return Err(format!(
                        "knn: k = {k} neighbours, but the sets have {n} points"
                    ));
                }
                Ok(Type {
                    dtype: DType::I32,
                    shape: vec![t.shape[0].clone(), t.shape[1].clone(), Dim::Known(*k)],
                })
            }
            GatherPoints => {
                arity(2)?;
                let (h, idx) = (&ins[0], &ins[1]);
                if h.rank() != 3 || idx.rank() != 3 || idx.dtype != DType::I32 {
                    return Err(format!(
                        "gather_points takes sets [B, N, C] and i32 indices [B, M, K], got {h} and {idx}"
                    ));
                }
                if h.shape[0] != idx.shape[0] {
                    return Err(format!(
                        "gather_points: {h} and {idx} have different batches"
                    ));
                }
                let mut shape = idx.shape.clone();
                shape.push(h.shape[2].clone());
                Ok(Type {
                    dtype: h.dtype,
                    shape,
                })
            }
            ScatterPoints { points } => {
                arity(2)?;
                let (idx, g) = (&ins[0], &ins[1]);
                if idx.rank() != 3 || g.rank() != 4 || g.shape[..3] != idx.shape[..] {
                    return Err(format!("scatter_points: indices {idx} do not lead {g}"));
                }
                Ok(Type {
                    dtype: g.dtype,
                    shape: vec![
                        idx.shape[0].clone(),
                        Dim::Known(*points),
                        g.shape[3].clone(),
                    ],
                })
            }
            SpMM | SpMMT => {
                arity(4)?;
                let names = ["indptr", "indices", "values"];
                for (t, name) in ins[..3].iter().zip(names) {
                    if t.rank() != 1 {
                        return Err(format!("sparse matrix: {name} must be a vector, got {t}"));
                    }
                }
                if ins[0].dtype != DType::I32 || ins[1].dtype != DType::I32 {
                    return Err("sparse matrix: indptr and indices must be i32".into());
                }
                if ins[3].rank() != 2 || ins[3].dtype != DType::F32 {
                    return Err(format!(
                        "a sparse matrix multiplies an f32 matrix [rows, features], got {}",
                        ins[3]
                    ));
                }
                if let (Some(p), Some(r)) = (ins[0].shape[0].known(), ins[3].shape[0].known())
                    && p != r + 1
                {
                    return Err(format!(
                        "a sparse matrix of {} rows times {}: the rows differ",
                        p.saturating_sub(1),
                        ins[3]
                    ));
                }
                Ok(ins[3].clone())
            }
            OneHot { depth } => {
                arity(1)?;
                if ins[0].dtype != DType::I32 {
                    return Err(format!("one_hot needs i32 labels, got {}", ins[0]));
                }
                let mut shape = ins[0].shape.clone();
                shape.push(Dim::Known(*depth));
                Ok(Type::f32(shape))
            }
            MatMul { ta, tb } => {
                arity(2)?;
                float(ins[0])?;
                float(ins[1])?;
                if ins[0].rank() < 2 || ins[1].rank() < 2 {
                    return Err(format!(
                        "`@` needs matrices (rank ≥ 2), got {} @ {}",
                        ins[0], ins[1]
                    ));
                }
                let swap = |t: &Type, on: bool| {
                    let mut t = t.clone();
                    if on {
                        let r = t.rank();
                        t.shape.swap(r - 2, r - 1);
                    }
                    t
                };
                let (a, b) = (&swap(ins[0], *ta), &swap(ins[1], *tb));
                let k1 = &a.shape[a.rank() - 1];
                let k2 = &b.shape[b.rank() - 2];
                let batch_ok = b.rank() == 2
                    || (a.rank() == b.rank() && a.shape[..a.rank() - 2] == b.shape[..b.rank() - 2]);
                if k1 != k2 || !batch_ok {
                    return Err(format!(
                        "shapes {} and {} do not fit `@`",
                        show_shape(&a.shape),
                        show_shape(&b.shape)
                    ));
                }
                let mut shape = a.shape[..a.rank() - 1].to_vec();
                shape.push(b.shape[b.rank() - 1].clone());
                Ok(Type::f32(shape))
            }
            ContractLeading => {
                arity(2)?;
                float(ins[0])?;
                float(ins[1])?;
                let (a, g) = (ins[0], ins[1]);
                if a.rank() < 2
                    || a.rank() != g.rank()
                    || a.shape[..a.rank() - 1] != g.shape[..g.rank() - 1]
                {
                    return Err(format!(
                        "contract_leading needs the same leading axes, got {a} and {g}"
                    ));
                }
                Ok(Type::f32(vec![
                    a.shape[a.rank() - 1].clone(),
                    g.shape[g.rank() - 1].clone(),
                ]))
            }
            Conv2d { geo } => {
                arity(2)?;
                float(ins[0])?;
                float(ins[1])?;
                let (x, w) = (ins[0], ins[1]);
                let (b, h, wd, c) = nhwc(x)?;
                let kernel_ok = w.rank() == 4
                    && w.shape[0] == Dim::Known(geo.size[0])
                    && w.shape[1] == Dim::Known(geo.size[1])
                    && w.shape[2] == c;
                if !kernel_ok {
                    return Err(format!(
                        "conv2d of an input {} with a filter {}: the filter must be [KH, KW, {}, F]",
                        show_shape(&x.shape),
                        show_shape(&w.shape),
                        c
                    ));
                }
                let [oh, ow] = geo.out_size(h, wd).ok_or_else(|| {
                    format!(
                        "conv2d: a {}x{} kernel does not fit an input {} with padding {:?}",
                        geo.size[0],
                        geo.size[1],
                        show_shape(&x.shape),
                        geo.pad
                    )
                })?;
                Ok(Type::f32(vec![
                    b,
                    Dim::Known(oh),
                    Dim::Known(ow),
                    w.shape[3].clone(),
                ]))
            }
            Conv2dBackInput { geo, input } => {
                arity(2)?;
                let (g, w) = (ins[0], ins[1]);
                let (b, oh, ow, f) = nhwc(g)?;
                if w.rank() != 4
                    || w.shape[3] != f
                    || geo.out_size(input[0], input[1]) != Some([oh, ow])
                {
                    return Err(format!(
                        "conv2d_back_input of {} with {}",
                        show_shape(&g.shape),
                        show_shape(&w.shape)
                    ));
                }
                Ok(Type::f32(vec![
                    b,
                    Dim::Known(input[0]),
                    Dim::Known(input[1]),
                    w.shape[2].clone(),
                ]))
            }
            Conv2dBackFilter { geo } => {
                arity(2)?;
                let (x, g) = (ins[0], ins[1]);
                let (_, h, wd, c) = nhwc(x)?;
                let (_, oh, ow, f) = nhwc(g)?;
                if geo.out_size(h, wd) != Some([oh, ow]) || x.shape[0] != g.shape[0] {
                    return Err(format!(
                        "conv2d_back_filter of {} and {}",
                        show_shape(&x.shape),
                        show_shape(&g.shape)
                    ));
                }
                Ok(Type::f32(vec![
                    Dim::Known(geo.size[0]),
                    Dim::Known(geo.size[1]),
                    c,
                    f,
                ]))
            }
            MaxPool2d { geo }
            | AvgPool2d { geo }
            | MaxPool2dBack { geo }
            | AvgPool2dBack { geo, .. }
                if geo.pad != [0; 4] =>
            {
                Err(format!("{}: pooling windows are not padded", self.name()))
            }
            MaxPool2d { geo } | AvgPool2d { geo } => {
                arity(1)?;
                float(ins[0])?;
                let (b, h, wd, c) = nhwc(ins[0])?;
                let [oh, ow] = geo.out_size(h, wd).ok_or_else(|| {
                    format!(
                        "{}: a {}x{} window does not fit an input {}",
                        self.name(),
                        geo.size[0],
                        geo.size[1],
                        show_shape(&ins[0].shape)
                    )
                })?;
                Ok(Type::f32(vec![b, Dim::Known(oh), Dim::Known(ow), c]))
            }
            MaxPool2dBack { geo } => {
                arity(2)?;
                let (b, h, wd, c) = nhwc(ins[0])?;
                let [oh, ow] = geo
                    .out_size(h, wd)
                    .ok_or("maxpool2d_back: no window fits")?;
                if ins[1].shape != vec![b, Dim::Known(oh), Dim::Known(ow), c] {
                    return Err(format!(
                        "maxpool2d_back of {} for {}",
                        show_shape(&ins[1].shape),
                        show_shape(&ins[0].shape)
                    ));
                }
                Ok(ins[0].clone())
            }
            AvgPool2dBack { geo, input } => {
                arity(1)?;
                let (b, oh, ow, c) = nhwc(ins[0])?;
                if geo.out_size(input[0], input[1]) != Some([oh, ow]) {
                    return Err(format!(
                        "avgpool2d_back of {} for an input of {}x{}",
                        show_shape(&ins[0].shape),
                        input[0],
                        input[1]
                    ));
                }
                Ok(Type::f32(vec![
                    b,
                    Dim::Known(input[0]),
                    Dim::Known(input[1]),
                    c,
                ]))
            }
            Scan {
                output,
                carries,
                xs,
                out,
                ..
            } => {
                let (c, n) = (*carries as usize, *xs as usize);
                let out = Type {
                    dtype: out.0,
                    shape: out.1.clone(),
                };
                if ins.len() < c + n || n == 0 {
                    return Err(format!(
                        "scan with {c} carries and {n} scanned values has {} operands",
                        ins.len()
                    ));
                }
                let steps = ins[c].shape.first().cloned();
                for x in &ins[c..c + n] {
                    if x.rank() == 0 || x.shape.first() != steps.as_ref() {
                        return Err(format!(
                            "scanned values must share their first (time) axis: {} and {}",
                            ins[c], x
                        ));
                    }
                }
                let o = *output as usize;
                let fits = if o < c {
                    *ins[o] == out
                } else {
                    out.shape.first() == steps.as_ref()
                };
                if !fits {
                    return Err(format!("scan output {o} cannot be {out}"));
                }
                Ok(out)
            }
            Fused { out, .. } => Ok(Type {
                dtype: out.0,
                shape: out.1.clone(),
            }),
            Vjp(i) => {
                // vjp_i(node, g): the type of the node's input i, which the autodiff
                // walk records in the e-class analysis; here only the arity is known.
                arity(2)?;
                Err(format!("vjp{i} has no shape of its own"))
            }
        }
    }
}

/// The batch, rows, columns and channels of an NHWC value; rows and columns must be
/// known sizes (window geometry is fixed at compile time).
fn nhwc(t: &Type) -> Result<(Dim, usize, usize, Dim), ShapeError> {
    let err = || {
        format!(
            "expected an NHWC tensor [B, H, W, C] with known H and W, got {}",
            show_shape(&t.shape)
        )
    };
    if t.rank() != 4 {
        return Err(err());
    }
    let (Some(h), Some(w)) = (t.shape[1].known(), t.shape[2].known()) else {
        return Err(err());
    };
    Ok((t.shape[0].clone(), h, w, t.shape[3].clone()))
}

/// Whether two shapes have the same number of elements (symbols must match as a multiset).
fn same_size(a: &[Dim], b: &[Dim]) -> bool {
    let split = |s: &[Dim]| {
        let mut syms: Vec<String> = Vec::new();
        let mut n = 1usize;
        for d in s {
            match d {
                Dim::Known(k) => n *= k,
                Dim::Sym(x) => syms.push(x.clone()),
            }
        }
        syms.sort();
        (n, syms)
    };
    split(a) == split(b)
}

pub fn fmt_num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}
