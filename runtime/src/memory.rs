//! What training holds in memory, checked against what the process may allocate before any
//! tensor is made: a model that cannot fit is an error that says how large it is, not an
//! allocation failure that aborts the process.

use crate::session::Setup;
use std::path::Path;

/// Bytes of an f32 tensor of this shape (None past u128).
fn bytes(shape: &[usize]) -> Option<u128> {
    shape
        .iter()
        .try_fold(4u128, |a, &d| a.checked_mul(d as u128))
}

/// "40.3 GB".
pub fn short(b: u128) -> String {
    let units = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    let f = b as f64;
    match units.iter().find(|(_, u)| f >= *u) {
        Some((name, u)) => format!("{:.1} {name}", f / u),
        None => format!("{b} bytes"),
    }
}

/// "40.3 GB (40320000000 bytes)".
pub fn human(b: u128) -> String {
    if b < 1000 {
        short(b)
    } else {
        format!("{} ({b} bytes)", short(b))
    }
}

/// The parameters, their gradients and the optimizer state a training step keeps (and a
/// copy of the parameters with early stopping), by part.
pub fn training_needs(setup: &Setup) -> Vec<(&str, u128)> {
    let sum = |shapes: &mut dyn Iterator<Item = &Vec<usize>>| {
        shapes.fold(0u128, |a, s| {
            a.saturating_add(bytes(s).unwrap_or(u128::MAX))
        })
    };
    let params = sum(&mut setup.params.iter().map(|p| &p.shape));
    let states = sum(&mut setup.states.iter().map(|s| &s.shape));
    let mut parts = vec![
        ("parameters", params),
        ("their gradients", params),
        ("optimizer state", states),
    ];
    if setup.cfg.early_stopping.is_some() {
        parts.push(("the best weights (early stopping)", params));
    }
    parts
}

/// The bytes of the intermediate values of one training step at `batch` rows: the JIT
/// arena of every objective's step (each keeps its own). None on the reference engine,
/// or where a plan cannot be made before the data is known.
pub fn step_arena(setup: &Setup, batch: usize) -> Option<u128> {
    let syms = [("B".to_string(), batch)].into_iter().collect();
    setup.steps.iter().try_fold(0u128, |a, s| {
        let plan = s.engine.memory_plan(&syms)?.ok()?;
        Some(a.saturating_add(plan.arena_bytes as u128))
    })
}

/// Refuse to train a model whose parameters, gradients and optimizer state (and, given the
/// rows of a training batch, the intermediate values of a step) exceed what this process
/// may allocate.
pub fn check_fits(setup: &Setup, file: &Path, batch: Option<usize>) -> Result<(), String> {
    let arena = batch.and_then(|b| Some((b, step_arena(setup, b)?)));
    let label = arena.map(|(b, _)| format!("intermediate values of a step at batch {b}"));
    let mut parts = training_needs(setup);
    if let (Some((_, bytes)), Some(label)) = (arena, &label) {
        parts.push((label.as_str(), bytes));
    }
    let need = parts.iter().fold(0u128, |a, (_, b)| a.saturating_add(*b));
    let Some((left, limit)) = available() else {
        return Ok(());
    };
    if need <= left {
        return Ok(());
    }
    let list: Vec<String> = parts
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(what, b)| format!("{what} {}", short(*b)))
        .collect();
    let advice = match arena {
        Some((_, bytes)) if bytes > need / 2 => "make the batch or the layers' outputs smaller",
        _ => "make the model smaller",
    };
    Err(format!(
        "{}: training this model needs at least {} ({}), more than the {} {limit}; {advice}",
        file.display(),
        human(need),
        list.join(", "),
        human(left)
    ))
}

/// The bytes this process may still allocate, and what limits them (Linux: the available
/// memory and swap, and the address-space limit, `ulimit -v`, less what is mapped already).
/// None where neither is known.
fn available() -> Option<(u128, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let field = |text: &str, key: &str| -> Option<u128> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    let mut best: Option<(u128, &'static str)> = meminfo.as_deref().and_then(|m| {
        let avail = field(m, "MemAvailable:")?;
        Some((
            avail + field(m, "SwapFree:").unwrap_or(0),
            "of memory this machine has available",
        ))
    });
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let limit = limits.as_deref().and_then(|l| {
        let line = l.lines().find(|x| x.starts_with("Max address space"))?;
        line.split_whitespace().nth(3)?.parse::<u128>().ok()
    });
    if let Some(limit) = limit {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let mapped = status
            .as_deref()
            .and_then(|s| field(s, "VmSize:"))
            .unwrap_or(0);
        let left = limit.saturating_sub(mapped);
        if best.is_none_or(|(b, _)| left < b) {
            best = Some((
                left,
                "of address space this process may still map (ulimit -v)",
            ));
        }
    }
    best
}
