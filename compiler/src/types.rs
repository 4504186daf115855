//! Tensor types of the IR: a dtype and a shape whose dimensions are known sizes or
//! named symbols (the batch `B`), resolved when the graph runs.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Known(usize),
    Sym(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

pub type Shape = Vec<Dim>;

pub fn shape_of(dims: &[usize]) -> Shape {
    dims.iter().map(|&d| Dim::Known(d)).collect()
}

pub fn show_shape(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Element types. Integers (labels, token ids) are stored as exact f32 values by the
/// interpreter; the dtype is still checked so that, say, a label tensor is not multiplied
/// into a weight matrix by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    I32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub dtype: DType,
    pub shape: Shape,
}

impl Type {
    pub fn f32(shape: Shape) -> Type {
        Type {
            dtype: DType::F32,
            shape,
        }
    }
    pub fn scalar() -> Type {
        Type::f32(vec![])
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, parts.join(","))
    }
}

/// numpy broadcasting: align on the right; equal dims or a 1 on either side.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Shape> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n {
            Some(&a[i + a.len() - n])
        } else {
            None
        };
        let db = if i + b.len() >= n {
            Some(&b[i + b.len() - n])
        } else {
            None
        };
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Known(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Known(1))) => x.clone(),
            _ => return None,
        });
    }
    Some(out)
}

/// Whether a tensor of shape `from` broadcasts to `to` (without changing `to`).
pub fn broadcasts_to(from: &[Dim], to: &[Dim]) -> bool {
    broadcast(from, to).is_some_and(|s| s == to)
}
