//! What each data set looks like to the compiler: the shapes of `x` and `y` and the named
//! sizes (`inputs`, `classes`, `height`, …) a model may use. Known without reading the
//! data, except for `songs`, whose vocabulary comes from its file (or a checkpoint).

use dlc_compiler::lower::DataSig;
use dlc_compiler::types::{DType, Dim, Type};
use dlc_data::{Dataset, Task};

/// Per-example x shape and task of every known data set.
fn known(name: &str) -> Option<(Vec<usize>, Task)> {
    Some(match name {
        "digits" => (vec![8, 8], Task::Classification { classes: 10 }),
        "mnist" | "fashion_mnist" => (vec![28, 28], Task::Classification { classes: 10 }),
        "breast_cancer" => (vec![30], Task::Binary),
        "cora" => (vec![1433], Task::Classification { classes: 7 }),
        "point_mnist" => (vec![128, 2], Task::Classification { classes: 10 }),
        "diabetes" => (vec![10], Task::Regression),
        _ => return None,
    })
}

pub fn canonical(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

/// The signature of `point_mnist` with `points` points per set: x f32[B, points, 2].
pub fn point_sets(points: usize) -> DataSig {
    make(
        "point_mnist",
        &[points, 2],
        Task::Classification { classes: 10 },
    )
}

/// The signature of a data set or environment by name (without loading it).
pub fn by_name(name: &str) -> Option<DataSig> {
    let name = canonical(name);
    if let Ok(env) = crate::envs::Environment::new(&name) {
        return Some(environment(&env));
    }
    let (x_shape, task) = known(&name)?;
    let mut sig = make(&name, &x_shape, task);
    sig.sparse.extend(
        dlc_compiler::lower::SPARSE_INPUTS
            .iter()
            .filter(|(d, _)| *d == name)
            .map(|(_, n)| n.to_string()),
    );
    Some(sig)
}

/// The signature of a loaded data set.
pub fn of(d: &Dataset) -> DataSig {
    match (&d.vocab, &d.x_shape[..]) {
        (Some(vocab), [seq]) => text(&d.name, Some(vocab.len()), *seq),
        _ => {
            let mut sig = make(&d.name, &d.x_shape, d.task);
            sig.sparse = d.sparse.iter().map(|m| m.name.clone()).collect();
            sig
        }
    }
}

/// The signature of a character-level text data set (`songs`): `x` and `y` are
/// i32[B, seq] character ids (`y` the next character at every position), with the sizes
/// `vocab`, `classes` and `outputs` (the vocabulary size), `seq`, `inputs` and `features`
/// (= seq).
pub fn text(name: &str, vocab: Option<usize>, seq: usize) -> DataSig {
    let ids = Type {
        dtype: DType::I32,
        shape: vec![Dim::Sym("B".into()), Dim::Known(seq)],
    };
    let mut dims = vec![("inputs", seq), ("features", seq), ("seq", seq)];
    if let Some(v) = vocab {
        dims.extend([("classes", v), ("outputs", v), ("vocab", v)]);
    }
    DataSig {
        name: name.to_string(),
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        x: ids.clone(),
        y: ids,
        experience: Vec::new(),
        sparse: Vec::new(),
    }
}

fn make(name: &str, x_shape: &[usize], task: Task) -> DataSig {
    let inputs: usize = x_shape.iter().product();
    let mut dims = vec![
        ("inputs".to_string(), inputs),
        ("features".to_string(), inputs),
    ];
    if name == "point_mnist" {
        dims.push(("points".into(), x_shape[0]));
    } else if let [h, w] = x_shape {
        dims.push(("height".into(), *h));
        dims.push(("width".into(), *w));
    }
    let b = || Dim::Sym("B".into());
    let mut xs = vec![b()];
    xs.extend(x_shape.iter().map(|&d| Dim::Known(d)));
    let y = match task {
        Task::Classification { classes } => {
            dims.push(("classes".into(), classes));
            dims.push(("outputs".into(), classes));
            Type {
                dtype: DType::I32,
                shape: vec![b()],
            }
        }
        Task::Binary | Task::Regression => {
            dims.push(("outputs".into(), 1));
            Type::f32(vec![b(), Dim::Known(1)])
        }
    };
    DataSig {
        name: name.to_string(),
        dims,
        x: Type::f32(xs),
        y,
        experience: Vec::new(),
        sparse: Vec::new(),
    }
}

/// The signature of a section on an environment: sizes `observations` and `actions` (the
/// number of discrete actions, or a continuous action's length), and the experience's
/// inputs: `obs`, `next_obs` f32[B, observations]; `action` i32[B] (discrete) or
/// f32[B, actions]; `reward`, `done` (1 where the episode terminated), `ret` (the
/// discounted return from the step, or the λ-return), `logp` (the action's
/// log-probability when taken), `adv` (its estimated advantage), each f32[B]. `x` and `y` stand for `obs` and `action`.
pub fn environment(env: &crate::envs::Environment) -> DataSig {
    use crate::envs::ActionSpace;
    let b = || Dim::Sym("B".into());
    let obs = Type::f32(vec![b(), Dim::Known(env.obs_dim())]);
    let (actions, action) = match env.action_space() {
        ActionSpace::Discrete(n) => (
            n,
            Type {
                dtype: DType::I32,
                shape: vec![b()],
            },
        ),
        ActionSpace::Box { dim, .. } => (dim, Type::f32(vec![b(), Dim::Known(dim)])),
    };
    let row = Type::f32(vec![b()]);
    let experience = vec![
        ("obs".to_string(), obs.clone()),
        ("action".to_string(), action.clone()),
        ("reward".to_string(), row.clone()),
        ("next_obs".to_string(), obs.clone()),
        ("done".to_string(), row.clone()),
        ("ret".to_string(), row.clone()),
        ("logp".to_string(), row.clone()),
        ("adv".to_string(), row),
    ];
    DataSig {
        name: env.name().to_string(),
        dims: vec![
            ("observations".to_string(), env.obs_dim()),
            ("actions".to_string(), actions),
        ],
        x: obs,
        y: action,
        experience,
        sparse: Vec::new(),
    }
}

/// The signature of an architecture search with `steps` decisions of at most `options`
/// options each (`dlc_compiler::lower::search`): `previous`, `decisions` i32[B, steps],
/// `allowed` f32[steps, options], `reward`, `adv` f32[B]; sizes `steps` and `options`.
/// `x` and `y` stand for `previous` and `decisions`.
pub fn architectures(steps: usize, options: usize) -> DataSig {
    let b = || Dim::Sym("B".into());
    let ids = Type {
        dtype: DType::I32,
        shape: vec![b(), Dim::Known(steps)],
    };
    let row = Type::f32(vec![b()]);
    DataSig {
        name: dlc_compiler::lower::SEARCH_SOURCE.to_string(),
        dims: vec![
            ("steps".to_string(), steps),
            ("options".to_string(), options),
        ],
        x: ids.clone(),
        y: ids.clone(),
        experience: vec![
            ("previous".to_string(), ids.clone()),
            ("decisions".to_string(), ids),
            (
                "allowed".to_string(),
                Type::f32(vec![Dim::Known(steps), Dim::Known(options)]),
            ),
            ("reward".to_string(), row.clone()),
            ("adv".to_string(), row),
        ],
        sparse: Vec::new(),
    }
}
