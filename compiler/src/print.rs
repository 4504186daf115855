//! Canonical text form of a graph: values numbered in schedule order (see
//! [`Graph::schedule`]), so the text changes only when the graph does.

use crate::ir::Graph;
use std::collections::HashMap;
use std::fmt::Write;

pub fn print_graph(g: &Graph) -> String {
    let order = g.schedule();
    let num: HashMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut out = String::new();
    for &n in &order {
        let node = g.node(n);
        let ins: Vec<String> = g.inputs(n).iter().map(|i| format!("%{}", num[i])).collect();
        let attrs = node.op.attrs();
        let _ = write!(out, "%{} = {}", num[&n], node.op.name());
        if !attrs.is_empty() {
            let _ = write!(out, "[{attrs}]");
        }
        if !ins.is_empty() {
            let _ = write!(out, " {}", ins.join(", "));
        }
        let _ = writeln!(out, " : {}", node.ty);
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "out {name} = %{}", num[id]);
    }
    for (i, b) in g.bodies.iter().enumerate() {
        let _ = writeln!(out, "body {i} {{");
        for line in print_graph(b).lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "}}");
    }
    out
}
