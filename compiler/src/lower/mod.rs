//! Lowering: from the parsed file (plus the prelude) to an IR graph.
//!
//! A `Program` is a parsed file. `lower_training` builds the graph a training section
//! describes (inputs `x`, `y` from the data set; outputs `loss` and `pred`),
//! `lower_predict` the graph of the model's `forward` function alone (used by `run`).

mod agent;
mod builtins;
mod eval;
mod resolve;
mod scan;
mod search;
mod value;

pub use agent::{
    Agent, ENVIRONMENTS, EvalSchedule, Experience, INPUTS as ENV_INPUTS, Lagged, Policy,
};
pub use builtins::ALL as BUILTINS;
pub use eval::{Lowerer, MAX_CALL_DEPTH, Mode, ParamInfo};
pub use search::{
    Choice, Decision, INPUTS as SEARCH_INPUTS, SOURCE as SEARCH_SOURCE, Search,
    space as search_space,
};
pub use value::{Init, Optimizer, Value};

use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::types::{DType, Type};
use dlc_dsl::ast::*;
use dlc_dsl::{Diagnostic, Source};
use eval::{Ctx, Scope};
use std::collections::HashMap;
use std::rc::Rc;
use value::{Func, Instance};

/// The sparse inputs of the graph data sets, (data set, name): what a section on them has in
/// scope besides `x` and `y`.
pub const SPARSE_INPUTS: &[(&str, &str)] = &[("cora", "adj")];

/// A parsed `.dl` file with the prelude.
#[derive(Clone)]
pub struct Program {
    pub source: Source,
    pub file: File,
    prelude: File,
    /// Models and functions of the files this one imports (`import "other.dl"`).
    imported: Vec<Item>,
    import_count: usize,
    /// Values for parameters of the main model given on the command line (`--set`).
    sets: Vec<(String, SetValue)>,
}

/// A value for a parameter of the main model given on the command line
/// (`--set NAME=VALUE`): it replaces the parameter's default, or the size the data set
/// provides.
#[derive(Clone, Debug, PartialEq)]
pub enum SetValue {
    Num(f64),
    Bool(bool),
    Str(String),
    /// A bare word: a name of the language (`relu`, `tanh`, `he`, a model or function
    /// of the file) when there is one, else the word as a string.
    Word(String),
}

impl SetValue {
    /// Read a `--set` value: a number, `true`/`false`, a quoted string (`"tanh"` or
    /// `'tanh'`) or a bare word; anything else is taken as a string.
    pub fn parse(text: &str) -> SetValue {
        let t = text.trim();
        if let Ok(v) = t.parse::<f64>()
            && v.is_finite()
        {
            return SetValue::Num(v);
        }
        match t {
            "true" => return SetValue::Bool(true),
            "false" => return SetValue::Bool(false),
            _ => {}
        }
        for q in ['"', '\''] {
            if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
                return SetValue::Str(t[1..t.len() - 1].to_string());
            }
        }
        let word = t.starts_with(|c: char| c.is_alphabetic() || c == '_')
            && t.chars().all(|c| c.is_alphanumeric() || c == '_');
        if word {
            SetValue::Word(t.to_string())
        } else {
            SetValue::Str(t.to_string())
        }
    }
}

/// Imported files are parsed with their spans placed after the prelude's, each file at
/// its own multiple of this, so that errors inside them are reported at the user's call.
const IMPORT_SPACING: usize = 1 << 32;

/// What a data set tells the compiler: named sizes and the types of `x` and `y`.
#[derive(Clone, Debug)]
pub struct DataSig {
    pub name: String,
    pub dims: Vec<(String, usize)>,
    pub x: Type,
    pub y: Type,
    /// An environment's (empty for a data set): the inputs a section on it reads
    /// (`obs`, `action`, …; see `agent::INPUTS`) with their types, in place of `x`, `y`.
    pub experience: Vec<(String, Type)>,
    /// Square sparse matrices over the rows of `x` (a graph's adjacency `adj`): each is
    /// three inputs `NAME.indptr`, `NAME.indices`, `NAME.values` and, in the section, a
    /// sparse [B, B] matrix.
    pub sparse: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// The settings of a training section.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub data: String,
    pub data_args: Vec<(String, String)>,
    pub optimizer: Optimizer,
    pub batch: usize,
    pub epochs: usize,
    pub validation: bool,
    pub early_stopping: Option<EarlyStopping>,
    pub clip_norm: Option<f64>,
    /// `attack(epsilons: [...])`: `dlc eval` measures the test accuracy under attack.
    pub attack: Option<Attack>,
    /// `mc_dropout(passes: T)`: `dlc eval` also predicts by Monte Carlo dropout, the
    /// class probabilities averaged over T passes with every random op of the model drawing
    /// (dropout kept on), and reports the predictive uncertainty and its parts.
    pub mc_dropout: Option<usize>,
    /// On `architectures`: the search a controller trained by this section runs.
    pub search: Option<Search>,
    /// What each training step minimises, in the order the steps run them on a batch: one
    /// objective `loss` for a section with `loss = …`, else one per `minimize`.
    pub objectives: Vec<Objective>,
    /// `metrics = [a, b]`: scalars bound in the section, reported as `train_a`, `test_a`, …
    /// (outputs of the lowered graph under their names).
    pub reports: Vec<String>,
    /// The loop around the objectives of a section on an environment.
    pub agent: Option<Agent>,
}

/// One objective of a training section: a scalar minimised over some of the main model's
/// parameters by its own optimizer (`minimize d_loss over disc with adam(lr: 2e-4)`).
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// The name its value is reported under (`loss` for `loss = …`; `d_loss` for
    /// `minimize d_loss …`), which is also its output in the lowered graph.
    pub name: String,
    /// The parameters it trains, by name (the `over` members' parameters, or all).
    pub params: Vec<String>,
    /// Its own optimizer (`with …`); None: the section's `optimizer`.
    pub optimizer: Option<Optimizer>,
}

impl Objective {
    /// The optimizer this objective steps with.
    pub fn optimizer<'a>(&'a self, cfg: &'a TrainConfig) -> &'a Optimizer {
        self.optimizer.as_ref().unwrap_or(&cfg.optimizer)
    }
}

/// Evaluation under adversarial attack: for each ε, the test inputs moved by
/// ε·sign(∂loss/∂x) (FGSM) and, as the control, by ε times a random sign per pixel, with
/// pixels clipped to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    pub epsilons: Vec<f64>,
}

/// A lowered graph with the parameters it needs.
pub struct Lowered {
    pub graph: Graph,
    pub params: Vec<ParamInfo>,
}

pub type Diags = Vec<Diagnostic>;

impl Program {
    /// Parse a file. Errors: syntax errors (one per item), an empty file, duplicate names.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Program, (Source, Diags)> {
        let text = match dlc_dsl::check_text(bytes) {
            Ok(t) => t.to_string(),
            Err(d) => {
                return Err((
                    Source::new(
                        name,
                        String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_string(),
                    ),
                    vec![d],
                ));
            }
        };
        let source = Source::new(name, text);
        let (file, mut diags) = dlc_dsl::parse_file(&source.text);
        // The prelude is parsed once per process.
        static PRELUDE: std::sync::OnceLock<File> = std::sync::OnceLock::new();
        let prelude = PRELUDE
            .get_or_init(|| {
                let (prelude, pd) = dlc_dsl::parse_file_at(dlc_dsl::PRELUDE, dlc_dsl::PRELUDE_BASE);
                assert!(pd.is_empty(), "the prelude does not parse: {pd:?}");
                prelude
            })
            .clone();
        if diags.is_empty() && file.items.is_empty() {
            diags.push(Diagnostic::new(
                Span::new(0, 0),
                "file defines no model: expected `model Name { … }`",
            ));
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for it in &file.items {
            let (Item::Model(_) | Item::Fn(_), Some(n)) = (it, it.name()) else {
                continue;
            };
            if let Some(prev) = seen.insert(&n.name, n.span) {
                let (l, c) = source.line_col(prev.start);
                diags.push(Diagnostic::new(
                    n.span,
                    format!(
                        "`{}` is defined twice (first at line {l}, column {c})",
                        n.name
                    ),
                ));
            }
        }
        // One training section; or two when one searches architectures (the other is
        // then its children's recipe).
        let trains: Vec<&TrainDef> = train_defs(&file).collect();
        let searches = trains
            .iter()
            .filter(|t| t.data.name == search::SOURCE)
            .count();
        if trains.len() > 2 || (trains.len() == 2 && searches != 1) {
            diags.push(Diagnostic::new(
                trains[trains.len() - 1].span,
                "only one training section per file is supported (two when one is `on architectures`: an architecture search and its children's section)",
            ));
        }
        if diags.is_empty() {
            Ok(Program {
                source,
                file,
                prelude,
                imported: Vec::new(),
                import_count: 0,
                sets: Vec::new(),
            })
        } else {
            Err((source, diags))
        }
    }

    /// The files this one imports, as written (paths relative to this file), with the
    /// span of each `import`.
    pub fn imports(&self) -> Vec<(String, Span)> {
        self.file
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Import(im) => Some((im.path.clone(), im.span)),
                _ => None,
            })
            .collect()
    }

    /// Add the models and functions of an imported program (and of what it imports);
    /// its training section is not taken. Its text is parsed again with spans of its own
    /// (after the prelude's), so that errors in it are reported at the user's call.
    pub fn add_import(&mut self, other: &Program) {
        let base = dlc_dsl::PRELUDE_BASE + IMPORT_SPACING * (self.imported_files() + 1);
        let (file, _) = dlc_dsl::parse_file_at(&other.source.text, base);
        self.imported.extend(other.imported.iter().cloned());
        self.imported.extend(
            file.items
                .into_iter()
                .filter(|i| matches!(i, Item::Model(_) | Item::Fn(_))),
        );
        self.import_count += 1 + other.import_count;
    }

    fn imported_files(&self) -> usize {
        self.import_count
    }

    /// Give parameters of the main model values from the command line (`--set
    /// NAME=VALUE`, in order; a later value for the same name wins). A name that is not
    /// a parameter of the main model is an error that lists its parameters.
    pub fn set_params(&mut self, sets: &[(String, String)]) -> Result<(), String> {
        if sets.is_empty() {
            return Ok(());
        }
        let main = self.main_model().map_err(|d| {
            d.first()
                .map_or_else(|| "no model".to_string(), |d| d.message.clone())
        })?;
        let params: Vec<&str> = main.params.iter().map(|p| p.name.name.as_str()).collect();
        for (name, text) in sets {
            if !params.contains(&name.as_str()) {
                let hint = dlc_dsl::nearest(name, params.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                let list = if params.is_empty() {
                    "it has none".to_string()
                } else {
                    format!("its parameters: {}", params.join(", "))
                };
                return Err(format!(
                    "--set {name}={text}: model `{}` has no parameter `{name}`{hint} ({list})",
                    main.name.name
                ));
            }
            self.sets.retain(|(n, _)| n != name);
            self.sets.push((name.clone(), SetValue::parse(text)));
        }
        Ok(())
    }

    /// The data-set arguments written in the training section (`on songs(seq: 100)`), as
    /// (name, value) text; a positional argument has an empty name. Empty without a
    /// training section.
    pub fn data_args(&self) -> Result<Vec<(String, String)>, Diags> {
        let Some(t) = self.train_def() else {
            return Ok(Vec::new());
        };
        let mut lw = Lowerer::new(self.globals(), Mode::Eval);
        let scope = Scope::new();
        let cx = Ctx {
            scope: &scope,
            inst: None,
        };
        let args: Vec<(String, String)> = t
            .data_args
            .iter()
            .filter_map(|a| data_arg(&mut lw, a, &cx))
            .collect();
        if lw.diags.is_empty() {
            Ok(args)
        } else {
            Err(lw.diags)
        }
    }

    /// The training section: an architecture search's when the file has one, else the
    /// only one.
    pub fn train_def(&self) -> Option<&TrainDef> {
        train_defs(&self.file)
            .find(|t| t.data.name == search::SOURCE)
            .or_else(|| train_defs(&self.file).next())
    }

    /// The program of an architecture search's children: this file without the search
    /// section, so that the child's section is the training section. None without one.
    pub fn children(&self) -> Option<Program> {
        self.train_def()?.data.name.eq(search::SOURCE).then(|| {
            let mut p = self.clone();
            p.file
                .items
                .retain(|i| !matches!(i, Item::Train(t) if t.data.name == search::SOURCE));
            p.sets.clear();
            p
        })
    }

    /// The model a file is about: the one its training section trains, else the first.
    pub fn main_model(&self) -> Result<Rc<ModelDef>, Diags> {
        let models: Vec<&ModelDef> = self
            .file
            .items
            .iter()
            .chain(&self.imported)
            .filter_map(|i| {
                if let Item::Model(m) = i {
                    Some(m)
                } else {
                    None
                }
            })
            .collect();
        if let Some(t) = self.train_def() {
            return match models.iter().find(|m| m.name.name == t.model.name) {
                Some(m) => Ok(Rc::new((*m).clone())),
                None => {
                    let names = models.iter().map(|m| m.name.name.as_str());
                    let hint = dlc_dsl::nearest(&t.model.name, names)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    Err(vec![Diagnostic::new(
                        t.model.span,
                        format!("no model named `{}` in this file{hint}", t.model.name),
                    )])
                }
            };
        }
        match models.first() {
            Some(m) => Ok(Rc::new((*m).clone())),
            None => Err(vec![Diagnostic::new(
                Span::new(0, 0),
                "file defines no model: expected `model Name { … }`",
            )]),
        }
    }

    fn globals(&self) -> HashMap<String, Value> {
        let mut g = HashMap::new();
        for it in self
            .prelude
            .items
            .iter()
            .chain(&self.imported)
            .chain(&self.file.items)
        {
            match it {
                Item::Model(m) => {
                    g.insert(
                        m.name.name.clone(),
                        Value::Func(Func::Model(Rc::new(m.clone()))),
                    );
                }
                Item::Fn(f) => {
                    g.insert(
                        f.name.name.clone(),
                        Value::Func(Func::Global(Rc::new(f.clone()))),
                    );
                }
                Item::Train(_) | Item::Import(_) => {}
            }
        }
        g
    }

    fn instantiate_main(
        &self,
        lw: &mut Lowerer,
        dims: &HashMap<String, usize>,
    ) -> Result<Rc<value::Instance>, Diags> {
        self.instantiate_main_at(lw, dims, String::new())
    }

    /// The main model with its parameters under `path` (a lagged copy: `target.…`).
    fn instantiate_main_at(
        &self,
        lw: &mut Lowerer,
        dims: &HashMap<String, usize>,
        path: String,
    ) -> Result<Rc<value::Instance>, Diags> {
        let main = self.main_model()?;
        let span = main.name.span;
        // `--set` values are arguments, so they win over data-set sizes and defaults.
        let mut args = Vec::new();
        for (name, v) in &self.sets {
            let at = main
                .params
                .iter()
                .find(|p| &p.name.name == name)
                .map_or(span, |p| p.name.span);
            let value = match v {
                SetValue::Num(n) => Value::Num(*n),
                SetValue::Bool(b) => Value::Bool(*b),
                SetValue::Str(s) => Value::Str(s.clone()),
                SetValue::Word(w)
                    if lw.globals.contains_key(w) || builtins::named_value(w).is_some() =>
                {
                    let e = Expr {
                        kind: ExprKind::Name(w.clone()),
                        span: at,
                    };
                    let scope = Scope::new();
                    lw.eval(
                        &e,
                        &Ctx {
                            scope: &scope,
                            inst: None,
                        },
                    )
                }
                SetValue::Word(w) => Value::Str(w.clone()),
            };
            let ident = Ident {
                name: name.clone(),
                span: at,
            };
            args.push((Some(ident), value, at));
        }
        match lw.instantiate(&main, path, args, dims, span) {
            // Keep going after errors in members: later code may have more to report.
            Value::Instance(i) => Ok(i),
            _ => Err(std::mem::take(&mut lw.diags)),
        }
    }

    /// The graph of the main model's `forward` with its declared parameter types as inputs.
    pub fn lower_predict(&self, dims: &[(String, usize)], mode: Mode) -> Result<Lowered, Diags> {
        self.lower_function("forward", dims, mode)
    }

    /// Lower one function of the main model (`forward`, or `decode` to sample from a
    /// generative model) on inputs of its declared types; its result is the output `pred`.
    pub fn lower_function(
        &self,
        name: &str,
        dims: &[(String, usize)],
        mode: Mode,
    ) -> Result<Lowered, Diags> {
        let mut lw = Lowerer::new(self.globals(), mode);
        lw.diags
            .extend(resolve::check(&self.file, &self.prelude, &self.imported));
        let dims: HashMap<String, usize> = dims.iter().cloned().collect();
        let inst = self.instantiate_main(&mut lw, &dims)?;
        let Some(fwd) = inst.def.fns.iter().find(|f| f.name.name == name) else {
            return Err(vec![Diagnostic::new(
                inst.def.name.span,
                format!("model `{}` has no `{name}` function", inst.def.name.name),
            )]);
        };
        let mut args = Vec::new();
        let empty = Scope::new();
        for p in &fwd.params {
            let Some(ty) = &p.ty else {
                lw.err(
                    p.name.span,
                    format!(
                        "parameter `{}` of `{name}` needs a type such as f32[B, 4]",
                        p.name.name
                    ),
                );
                continue;
            };
            if let Some(t) = lw.type_expr(
                ty,
                &Ctx {
                    scope: &empty,
                    inst: Some(&inst),
                },
            ) {
                let v = lw.node(
                    Op::Input {
                        name: p.name.name.clone(),
                        ty: (t.dtype, t.shape),
                    },
                    &[],
                    p.name.span,
                );
                args.push((None, v, p.name.span));
            }
        }
        if !lw.diags.is_empty() {
            return Err(lw.diags);
        }
        let f = Value::Func(Func::Method(inst.clone(), Rc::new(fwd.clone())));
        let out = lw.call(f, args, fwd.span, fwd.name.span);
        finish(lw, vec![("pred", out, fwd.span)])
    }

    /// The graph of the training section: inputs `x` and `y`, outputs `loss` and `pred`.
    pub fn lower_training(
        &self,
        data: &DataSig,
        mode: Mode,
    ) -> Result<(Lowered, TrainConfig), Diags> {
        let Some(t) = self.train_def() else {
            let m = self.main_model()?;
            return Err(vec![Diagnostic::new(
                m.name.span,
                format!(
                    "no training section: add `train {} on DATA {{ loss = … }}`",
                    m.name.name
                ),
            )]);
        };
        let mut lw = Lowerer::new(self.globals(), mode);
        lw.diags
            .extend(resolve::check(&self.file, &self.prelude, &self.imported));
        let dims: HashMap<String, usize> = data.dims.iter().cloned().collect();
        let inst = self.instantiate_main(&mut lw, &dims)?;
        let on_env = !data.experience.is_empty();
        let inputs: Vec<(String, Type)> = if on_env {
            data.experience.clone()
        } else {
            vec![("x".into(), data.x.clone()), ("y".into(), data.y.clone())]
        };
        let mut scope = Scope::new();
        let mut x = None;
        for (name, ty) in &inputs {
            let n = lw.graph.add_ok(
                Op::Input {
                    name: name.clone(),
                    ty: (ty.dtype, ty.shape.clone()),
                },
                &[],
            );
            x.get_or_insert(n);
            scope.insert(name.clone(), Value::Tensor(n));
        }
        let x = x.expect("a data set or environment has inputs");
        for name in &data.sparse {
            let input = |lw: &mut Lowerer, part: &str, dtype: DType, len: String| {
                lw.graph.add_ok(
                    Op::Input {
                        name: format!("{name}.{part}"),
                        ty: (dtype, vec![crate::types::Dim::Sym(len)]),
                    },
                    &[],
                )
            };
            let m = value::Sparse {
                indptr: input(&mut lw, "indptr", DType::I32, format!("{name}_ptr")),
                indices: input(&mut lw, "indices", DType::I32, format!("{name}_nnz")),
                values: input(&mut lw, "values", DType::F32, format!("{name}_nnz")),
                size: lw.graph.ty(x).shape[0].clone(),
            };
            scope.insert(name.clone(), Value::Sparse(Rc::new(m)));
        }
        let mut agent = agent::AgentParts::default();
        let mut search = search::SearchParts::default();
        // The prediction is forward(x) (on a graph, forward(x, adj)); calls are memoised,
        // so the loss shares it.
        let pred = match inst.def.fns.iter().find(|f| f.name.name == "forward") {
            Some(f) => {
                let fv = Value::Func(Func::Method(inst.clone(), Rc::new(f.clone())));
                let mut args = vec![(None, Value::Tensor(x), t.span)];
                for name in &data.sparse {
                    args.push((None, scope[name].clone(), t.span));
                }
                lw.call(fv, args, t.model.span, t.model.span)
            }
            None => lw.err(
                inst.def.name.span,
                format!("model `{}` has no `forward` function", inst.def.name.name),
            ),
        };
        let mut cfg = TrainConfig {
            data: t.data.name.clone(),
            data_args: Vec::new(),
            optimizer: Optimizer::with_defaults("adam", None).expect("adam"),
            batch: 32,
            epochs: 1,
            validation: false,
            early_stopping: None,
            clip_norm: None,
            attack: None,
            mc_dropout: None,
            search: None,
            objectives: Vec::new(),
            reports: Vec::new(),
            agent: None,
        };
        // `minimize` statements: (name, value, its span, `over` members, `with`).
        let mut minimized: Vec<(String, Value, Span, Vec<Ident>, Option<Optimizer>)> = Vec::new();
        // `metrics = [...]`: (name, value, span).
        let mut reports: Vec<(String, Value, Span)> = Vec::new();
        for a in &t.data_args {
            let cx = Ctx {
                scope: &scope,
                inst: Some(&inst),
            };
            if let Some(arg) = data_arg(&mut lw, a, &cx) {
                cfg.data_args.push(arg);
            }
        }
        let mut loss: Option<(Value, Span)> = None;
        for s in &t.stmts {
            match s {
                TrainStmt::Set(b) if agent::lagged_call(&b.value).is_some() => {
                    let every = agent::lagged_call(&b.value).and_then(|args| match args {
                        [a] if a.name.as_ref().is_none_or(|n| n.name == "every") => {
                            let cx = Ctx {
                                scope: &scope,
                                inst: Some(&inst),
                            };
                            count(&lw.eval(&a.value, &cx)).filter(|n| *n > 0)
                        }
                        _ => None,
                    });
                    let Some(every) = every else {
                        lw.err(
                            b.value.span,
                            "lagged takes every: N, the updates between copies",
                        );
                        continue;
                    };
                    if !on_env {
                        lw.err(b.value.span, "a lagged copy of the model (`lagged(every: N)`) belongs to training from an environment");
                        continue;
                    }
                    if agent.lagged.is_some() {
                        lw.err(b.value.span, "a second lagged copy: a section has one");
                        continue;
                    }
                    let copy = self.instantiate_main_at(&mut lw, &dims, b.name.name.clone())?;
                    scope.insert(b.name.name.clone(), Value::Instance(copy));
                    agent.lagged = Some(agent::Lagged {
                        name: b.name.name.clone(),
                        every,
                    });
                }
                TrainStmt::Set(b) if on_env && b.name.name == "steps" => {
                    let cx = Ctx {
                        scope: &scope,
                        inst: Some(&inst),
                    };
                    match count(&lw.eval(&b.value, &cx)) {
                        Some(n) if n > 0 => agent.steps = Some(n as u64),
                        _ => {
                            lw.err(
                                b.value.span,
                                "steps (environment steps to train for) must be a positive integer",
                            );
                        }
                    }
                }
                TrainStmt::Set(b) => {
                    let v = lw.eval(
                        &b.value,
                        &Ctx {
                            scope: &scope,
                            inst: Some(&inst),
                        },
                    );
                    let sp = b.value.span;
                    match b.name.name.as_str() {
                        "loss" => loss = set_loss(&mut lw, loss, v, sp),
                        "optimizer" => match v {
                            Value::Optimizer(o) => cfg.optimizer = o,
                            Value::Poison => {}
                            other => {
                                lw.err(
                                    sp,
                                    format!(
                                        "optimizer must be one of {}, found {}",
                                        Optimizer::NAMES.join(", "),
                                        other.kind()
                                    ),
                                );
                            }
                        },
                        "batch" | "epochs" => match count(&v) {
                            Some(n) if n > 0 => {
                                if b.name.name == "batch" {
                                    cfg.batch = n
                                } else {
                                    cfg.epochs = n
                                }
                            }
                            _ => {
                                lw.err(sp, format!("{} must be a positive integer", b.name.name));
                            }
                        },
                        "validation" => match v {
                            Value::Bool(on) => cfg.validation = on,
                            _ => {
                                lw.err(sp, "validation must be true or false");
                            }
                        },
                        "metrics" => {
                            // `metrics = [recon, kl]`: named scalars reported each epoch.
                            match &b.value.kind {
                                ExprKind::List(items)
                                    if items
                                        .iter()
                                        .all(|i| matches!(i.kind, ExprKind::Name(_))) =>
                                {
                                    let vals = match v {
                                        Value::List(vs) => vs,
                                        _ => Vec::new(),
                                    };
                                    for (i, val) in items.iter().zip(vals) {
                                        if let ExprKind::Name(n) = &i.kind {
                                            reports.push((n.clone(), val, i.span));
                                        }
                                    }
                                }
                                _ => {
                                    lw.err(sp, "metrics names the values to report: a list of names bound in the section, such as metrics = [recon, kl]");
                                }
                            }
                        }
                        "clip_norm" => match v {
                            Value::Num(c) if c > 0.0 => cfg.clip_norm = Some(c),
                            _ => {
                                lw.err(sp, "clip_norm must be a positive number");
                            }
                        },
                        _ => {
                            scope.insert(b.name.name.clone(), v);
                        }
                    }
                }
                TrainStmt::Call { name, args, span } => {
                    // Arguments, evaluated once for whichever statement this is.
                    let evaluated: Vec<(&Arg, Value)> = args
                        .iter()
                        .map(|a| {
                            let cx = Ctx {
                                scope: &scope,
                                inst: Some(&inst),
                            };
                            (a, lw.eval(&a.value, &cx))
                        })
                        .collect();
                    if agent::statement(&mut lw, &mut agent, &name.name, &evaluated, *span)
                        || search::statement(&mut lw, &mut search, &name.name, &evaluated, *span)
                    {
                        continue;
                    }
                    match name.name.as_str() {
                        "early_stopping" => {
                            let mut es = EarlyStopping {
                                patience: 3,
                                min_delta: 0.0,
                            };
                            for (a, v) in evaluated {
                                match (a.name.as_ref().map(|n| n.name.as_str()), &v) {
                                    (Some("patience") | None, Value::Num(_))
                                        if count(&v).is_some() =>
                                    {
                                        es.patience = count(&v).unwrap_or(3)
                                    }
                                    (Some("min_delta"), Value::Num(d)) if *d >= 0.0 => {
                                        es.min_delta = *d
                                    }
                                    _ => {
                                        lw.err(
                                            a.value.span,
                                            "early_stopping takes patience: N and min_delta: X",
                                        );
                                    }
                                }
                            }
                            cfg.early_stopping = Some(es);
                            cfg.validation = true;
                        }
                        "attack" => {
                            let mut epsilons = None;
                            for (a, v) in evaluated {
                                let list: Option<Vec<f64>> =
                                    match (&v, a.name.as_ref().map(|n| n.name.as_str())) {
                                        (Value::List(items), Some("epsilons") | None) => items
                                            .iter()
                                            .map(|i| match i {
                                                Value::Num(e) if *e >= 0.0 && e.is_finite() => {
                                                    Some(*e)
                                                }
                                                _ => None,
                                            })
                                            .collect(),
                                        _ => None,
                                    };
                                match list {
                                    Some(l) if !l.is_empty() => epsilons = Some(l),
                                    _ => {
                                        lw.err(
                                        a.value.span,
                                        "attack takes epsilons: a list of numbers ≥ 0, such as [0, 0.1, 0.3]",
                                    );
                                    }
                                }
                            }
                            match epsilons {
                                Some(epsilons) => cfg.attack = Some(Attack { epsilons }),
                                None => {
                                    lw.err(*span, "attack needs epsilons: [...]");
                                }
                            }
                        }
                        "mc_dropout" => {
                            let passes = match evaluated.as_slice() {
                                [(a, v)]
                                    if matches!(
                                        a.name.as_ref().map(|n| n.name.as_str()),
                                        Some("passes") | None
                                    ) =>
                                {
                                    count(v).filter(|&t| t >= 1)
                                }
                                _ => None,
                            };
                            match passes {
                                Some(t) => cfg.mc_dropout = Some(t),
                                None => {
                                    lw.err(
                                        *span,
                                        "mc_dropout takes passes: N, a whole number ≥ 1 of stochastic passes",
                                    );
                                }
                            }
                        }
                        other => {
                            let known = ["early_stopping", "attack", "mc_dropout"]
                                .iter()
                                .chain(agent::STATEMENTS)
                                .chain(search::STATEMENTS)
                                .copied();
                            let hint = dlc_dsl::nearest(other, known)
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            lw.err(
                                *span,
                                format!("unknown training statement `{other}(…)`{hint}"),
                            );
                        }
                    }
                }
                TrainStmt::Minimize {
                    loss: e,
                    over,
                    with,
                    span,
                } => {
                    let v = lw.eval(
                        e,
                        &Ctx {
                            scope: &scope,
                            inst: Some(&inst),
                        },
                    );
                    // Named by the value it minimises (`d_loss = …; minimize d_loss …`).
                    let name = match &e.kind {
                        ExprKind::Name(n) => n.clone(),
                        _ => "loss".to_string(),
                    };
                    let mut opt = None;
                    if let Some(w) = with {
                        match lw.eval(
                            w,
                            &Ctx {
                                scope: &scope,
                                inst: Some(&inst),
                            },
                        ) {
                            Value::Optimizer(o) => opt = Some(o),
                            Value::Poison => {}
                            other => {
                                lw.err(
                                    w.span,
                                    format!(
                                        "expected an optimizer such as adam(lr: 1e-3), found {}",
                                        other.kind()
                                    ),
                                );
                            }
                        }
                    }
                    minimized.push((name, v, *span, over.clone(), opt));
                }
            }
        }
        let mut outs: Vec<(String, Value, Span)> = Vec::new();
        match (loss, minimized.is_empty()) {
            (Some((v, sp)), true) => {
                cfg.objectives.push(Objective {
                    name: "loss".into(),
                    params: Vec::new(),
                    optimizer: None,
                });
                outs.push(("loss".into(), v, sp));
            }
            (None, true) => {
                lw.err(t.span, "the training section has no loss: add `loss = …`");
                return Err(lw.diags);
            }
            (Some((_, sp)), false) => {
                lw.err(
                    sp,
                    "a section with `minimize` names every objective there: write `minimize loss` (with `over …` to choose the parameters) instead of `loss = …`",
                );
                return Err(lw.diags);
            }
            (None, false) => {
                for (name, v, sp, over, opt) in minimized {
                    if cfg.objectives.iter().any(|o| o.name == name) {
                        lw.err(sp, format!("a second objective named `{name}`: give each `minimize` its own value (`{name}2 = …`)"));
                        continue;
                    }
                    let params = objective_params(&mut lw, &inst, &over);
                    outs.push((name.clone(), v, sp));
                    cfg.objectives.push(Objective {
                        name,
                        params,
                        optimizer: opt,
                    });
                }
                check_disjoint(&mut lw, &cfg.objectives, t.span);
                // `loss`, what the metrics report as the total, is the objectives' sum.
                if !outs.iter().any(|(n, _, _)| n == "loss") {
                    let parts: Option<Vec<NodeId>> = outs
                        .iter()
                        .map(|(_, v, _)| match v {
                            // Scalars only (`finish` reports any other objective).
                            Value::Tensor(n) if lw.graph.ty(*n).shape.is_empty() => Some(*n),
                            _ => None,
                        })
                        .collect();
                    if let Some(parts) = parts {
                        let total = parts[1..]
                            .iter()
                            .fold(parts[0], |a, &b| lw.graph.add_ok(Op::Add, &[a, b]));
                        outs.push(("loss".into(), Value::Tensor(total), t.span));
                    }
                }
            }
        }
        for (name, v, sp) in reports {
            if outs.iter().any(|(n, _, _)| *n == name) || name == "pred" {
                lw.err(
                    sp,
                    format!("`{name}` is already reported (as an objective or the loss)"),
                );
                continue;
            }
            cfg.reports.push(name.clone());
            outs.push((name, v, sp));
        }
        if data.name == search::SOURCE {
            // What belongs to an environment has no meaning here.
            if agent.steps.is_some() || agent.lagged.is_some() {
                lw.err(
                    t.span,
                    "an architecture search counts controller steps with search(Child, steps: N) (or --steps), and has no lagged copy",
                );
            }
            let globals = &lw.globals;
            let params = |name: &str| match globals.get(name) {
                Some(Value::Func(Func::Model(m))) => {
                    Some(m.params.iter().map(|p| p.name.name.clone()).collect())
                }
                _ => None,
            };
            let params: Vec<(String, Option<Vec<String>>)> = search
                .child
                .iter()
                .map(|(c, _, _)| (c.clone(), params(c)))
                .collect();
            cfg.search = search.finish(
                &mut lw,
                |c| {
                    params
                        .iter()
                        .find(|(n, _)| n == c)
                        .and_then(|(_, p)| p.clone())
                },
                t.span,
            );
        } else if let Some(sp) = search.first {
            lw.err(
                sp,
                "this statement belongs to an architecture search (`train Controller on architectures { … }`)",
            );
        }
        if on_env && data.name != search::SOURCE {
            cfg.agent = agent.finish(&mut lw, &data.name, t.span);
            // What acting computes besides `forward(obs)`: a Gaussian policy's log
            // standard deviation (`log_std(obs)`), the value that advantage estimation
            // needs (`value(obs)`).
            let mut extra = Vec::new();
            if let Some(a) = &cfg.agent {
                if a.policy == Policy::Gaussian {
                    extra.push((
                        "log_std",
                        "the log standard deviation of its actions, for a Gaussian policy",
                    ));
                }
                if let Experience::Episodes {
                    lambda: Some(_), ..
                } = a.experience
                {
                    extra.push((
                        "value",
                        "the expected return from a state, for advantage estimation (`lambda`)",
                    ));
                }
            }
            for (fname, what) in extra {
                let v = match inst.def.fns.iter().find(|f| f.name.name == fname) {
                    Some(f) => {
                        let fv = Value::Func(Func::Method(inst.clone(), Rc::new(f.clone())));
                        lw.call(
                            fv,
                            vec![(None, Value::Tensor(x), t.span)],
                            t.model.span,
                            t.model.span,
                        )
                    }
                    None => lw.err(
                        inst.def.name.span,
                        format!(
                            "model `{}` needs `fn {fname}(obs)`: {what}",
                            inst.def.name.name
                        ),
                    ),
                };
                outs.push((fname.into(), v, t.model.span));
            }
        } else if let Some(sp) = agent.first {
            lw.err(
                sp,
                format!(
                    "this statement belongs to training from an environment ({}), not on a data set",
                    agent::ENVIRONMENTS.join(", ")
                ),
            );
        }
        outs.push(("pred".into(), pred, t.model.span));
        let lowered = finish(
            lw,
            outs.iter()
                .map(|(n, v, sp)| (n.as_str(), v.clone(), *sp))
                .collect(),
        )?;
        // One objective steps with the section's optimizer (which `--optimizer` and `--lr`
        // set): its `with`, if any, is that optimizer.
        if let [one] = &mut cfg.objectives[..]
            && let Some(o) = one.optimizer.take()
        {
            cfg.optimizer = o;
        }
        // An objective without `over` trains every parameter (but a lagged copy's).
        let lagged = cfg
            .agent
            .as_ref()
            .and_then(|a| a.lagged.as_ref())
            .map(|l| format!("{}.", l.name));
        for o in &mut cfg.objectives {
            if o.params.is_empty() {
                o.params = lowered
                    .params
                    .iter()
                    .map(|p| p.name.clone())
                    .filter(|p| lagged.as_ref().is_none_or(|l| !p.starts_with(l.as_str())))
                    .collect();
            }
        }
        Ok((lowered, cfg))
    }
}

/// A data-set argument as (name, value) text; a value that is not a number, string or
/// boolean is reported.
fn data_arg(lw: &mut Lowerer, a: &Arg, cx: &Ctx) -> Option<(String, String)> {
    let key = a.name.as_ref().map(|n| n.name.clone()).unwrap_or_default();
    let shown = match lw.eval(&a.value, cx) {
        Value::Num(n) => n.to_string(),
        Value::Str(s) => s,
        Value::Bool(b) => b.to_string(),
        Value::Poison => return None,
        other => {
            lw.err(
                a.value.span,
                format!(
                    "data set arguments are numbers or strings, found {}",
                    other.kind()
                ),
            );
            return None;
        }
    };
    Some((key, shown))
}

fn train_defs(file: &File) -> impl Iterator<Item = &TrainDef> {
    file.items.iter().filter_map(|i| {
        if let Item::Train(t) = i {
            Some(t)
        } else {
            None
        }
    })
}

fn count(v: &Value) -> Option<usize> {
    match v {
        Value::Num(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1e12 => Some(*n as usize),
        _ => None,
    }
}

/// The parameters of the `over` members of the main model (by their dotted names' first
/// component), each member reported if unknown or without parameters. Empty `over`: empty
/// (the caller fills in every parameter once lowering has made them).
fn objective_params(lw: &mut Lowerer, inst: &Instance, over: &[Ident]) -> Vec<String> {
    let mut out = Vec::new();
    for m in over {
        let known: Vec<&str> = inst
            .def
            .bindings
            .iter()
            .map(|b| b.name.name.as_str())
            .collect();
        if !known.contains(&m.name.as_str()) {
            let hint = dlc_dsl::nearest(&m.name, known.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            lw.err(
                m.span,
                format!(
                    "`{}` is not a member of `{}` (`over` names the members whose parameters the objective trains){hint}",
                    m.name, inst.def.name.name
                ),
            );
            continue;
        }
        let mine: Vec<String> = lw
            .params
            .iter()
            .map(|p| p.name.clone())
            .filter(|p| p == &m.name || p.starts_with(&format!("{}.", m.name)))
            .collect();
        if mine.is_empty() {
            lw.err(
                m.span,
                format!("member `{}` has no trainable parameters", m.name),
            );
        }
        out.extend(mine);
    }
    out
}

/// Each parameter is trained by one objective: two optimizers stepping the same weights
/// on one batch is almost always a mistake (and their states would share names).
fn check_disjoint(lw: &mut Lowerer, objectives: &[Objective], span: Span) {
    for (i, a) in objectives.iter().enumerate() {
        for b in &objectives[i + 1..] {
            let (pa, pb) = (
                if a.params.is_empty() {
                    None
                } else {
                    Some(&a.params)
                },
                if b.params.is_empty() {
                    None
                } else {
                    Some(&b.params)
                },
            );
            let shared = match (pa, pb) {
                (Some(x), Some(y)) => x.iter().find(|p| y.contains(p)).cloned(),
                _ => Some("every parameter".to_string()),
            };
            if let Some(p) = shared {
                lw.err(
                    span,
                    format!(
                        "objectives `{}` and `{}` both train {p}: give each `minimize` its own members with `over …`",
                        a.name, b.name
                    ),
                );
                return;
            }
        }
    }
}

fn set_loss(
    lw: &mut Lowerer,
    prev: Option<(Value, Span)>,
    v: Value,
    span: Span,
) -> Option<(Value, Span)> {
    if prev.is_some() {
        lw.err(
            span,
            "a second `loss = …`: name each objective and minimise it over its members (`d_loss = …` then `minimize d_loss over disc with adam(lr: 2e-4)`)",
        );
        return prev;
    }
    Some((v, span))
}

fn finish(mut lw: Lowerer, outs: Vec<(&str, Value, Span)>) -> Result<Lowered, Diags> {
    for (name, v, span) in outs {
        match v {
            Value::Tensor(n) => {
                // Every output but the prediction is an objective: a scalar to minimise.
                if !matches!(name, "pred" | "log_std" | "value") {
                    let t = lw.graph.ty(n).clone();
                    if !t.shape.is_empty() || t.dtype != DType::F32 {
                        let what = if name == "loss" {
                            "the loss".to_string()
                        } else {
                            format!("objective `{name}`")
                        };
                        lw.err(span, format!("{what} must be an f32 scalar, found {t}; reduce it with mean(…) or sum(…)"));
                    }
                }
                lw.graph.set_output(name, n);
            }
            Value::Poison => {}
            other => {
                lw.err(
                    span,
                    format!("`{name}` must be a tensor, found {}", other.kind()),
                );
            }
        }
    }
    if !lw.diags.is_empty() {
        // The resolver and the evaluator may both report an unknown name: keep one.
        let mut seen = std::collections::HashSet::new();
        lw.diags.retain(|d| {
            !d.message.starts_with("unknown name") || seen.insert((d.span.start, d.span.end))
        });
        lw.diags.sort_by_key(|d| d.span.start);
        return Err(lw.diags);
    }
    Ok(Lowered {
        graph: lw.graph.compact(),
        params: lw.params,
    })
}
