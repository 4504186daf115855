//! Graphs and point sets: Cora as Kipf & Welling prepare it, point sets from MNIST, and a
//! point-cloud model whose prediction does not depend on the order of the points.

use dlc_compiler::interp::{self, Env};
use dlc_compiler::lower::{Mode, Program};
use dlc_compiler::ops::Op;
use ndarray::{ArrayD, IxDyn};

#[test]
fn cora_is_the_planetoid_graph() {
    let Some(data) = dlc_tests::shared_data() else {
        eprintln!("skipped: no shared data folder");
        return;
    };
    let d = dlc_data::load("cora", Some(&data.join("cora")), true).expect("cora loads");
    assert_eq!((d.train.n, d.x_shape.clone()), (2708, vec![1433]));
    let labelled = |s: &dlc_data::Split| s.y.iter().filter(|v| **v >= 0.0).count();
    assert_eq!(labelled(&d.train), 140);
    assert_eq!(labelled(d.val.as_ref().expect("validation")), 500);
    assert_eq!(labelled(&d.test), 1000);
    // Rows of the features sum to 1 (every Cora paper has words).
    for r in d.train.x.chunks(1433) {
        let s: f32 = r.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "row sum {s}");
    }
    // Â = D^-1/2 (A + I) D^-1/2: 10556 directed edges and 2708 self-loops; symmetric.
    let adj = &d.sparse[0];
    assert_eq!((adj.name.as_str(), adj.indices.len()), ("adj", 13264));
    let ptr: Vec<usize> = adj.indptr.iter().map(|v| *v as usize).collect();
    let entry = |r: usize, c: usize| {
        (ptr[r]..ptr[r + 1])
            .find(|&k| adj.indices[k] as usize == c)
            .map(|k| adj.values[k])
    };
    let deg = |r: usize| (ptr[r + 1] - ptr[r]) as f32;
    for r in [0usize, 1, 633, 2707] {
        assert_eq!(entry(r, r), Some(1.0 / deg(r)));
        for k in ptr[r]..ptr[r + 1] {
            let c = adj.indices[k] as usize;
            assert_eq!(entry(c, r), Some(adj.values[k]));
            assert!((adj.values[k] - 1.0 / (deg(r) * deg(c)).sqrt()).abs() < 1e-7);
        }
    }
}

#[test]
fn point_sets_come_from_the_ink() {
    let Some(data) = dlc_tests::shared_data() else {
        eprintln!("skipped: no shared data folder");
        return;
    };
    let dir = data.join("mnist");
    let args = |shuffle: &str| {
        vec![
            ("points".to_string(), "64".to_string()),
            ("shuffle_points".to_string(), shuffle.to_string()),
        ]
    };
    let a = dlc_data::load_with_args("point_mnist", Some(&dir), false, None, &args("false"))
        .expect("loads");
    let b = dlc_data::load_with_args("point_mnist", Some(&dir), false, None, &args("true"))
        .expect("loads");
    assert_eq!(a.x_shape, vec![64, 2]);
    assert_eq!(a.test.n, 10000);
    assert!(a.test.x.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The same points in another order.
    let mut moved = 0;
    for (p, q) in a.test.x.chunks(128).zip(b.test.x.chunks(128)).take(200) {
        let sorted = |s: &[f32]| {
            let mut v: Vec<(u32, u32)> = s
                .chunks(2)
                .map(|c| (c[0].to_bits(), c[1].to_bits()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(sorted(p), sorted(q));
        moved += usize::from(p != q);
    }
    assert!(moved > 150, "only {moved} sets reordered");
    assert_eq!(a.test.y, b.test.y);
}

/// models/pointcloud.dl's forward on a set and on the same set reversed: the same logits.
#[test]
fn the_point_cloud_model_ignores_the_order_of_points() {
    let path = dlc_tests::root().join("models/pointcloud.dl");
    let prog = Program::parse("pointcloud.dl", &std::fs::read(&path).expect("model"))
        .unwrap_or_else(|_| panic!("parses"));
    let dims = vec![("points".to_string(), 24), ("classes".to_string(), 10)];
    let lowered = prog.lower_predict(&dims, Mode::Eval).expect("lowers");
    let g = &lowered.graph;
    let mut env: Env<f64> = Env::new(0, 0);
    for (name, n) in g.leaves(|op| matches!(op, Op::Param { .. })) {
        let shape: Vec<usize> = g
            .ty(n)
            .shape
            .iter()
            .map(|d| d.known().expect("known"))
            .collect();
        let len: usize = shape.iter().product();
        let v: Vec<f64> = (0..len)
            .map(|i| ((i * 37 + name.len()) % 17) as f64 / 17.0 - 0.45)
            .collect();
        env.values.insert(
            name,
            ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape"),
        );
    }
    // 24 distinct points on a curve, and the same points reversed.
    let pts: Vec<f64> = (0..24)
        .flat_map(|i| {
            let t = i as f64 * 0.37;
            [t.sin() * 0.8, (t * 1.7).cos() * 0.6]
        })
        .collect();
    let rev: Vec<f64> = pts.chunks(2).rev().flatten().copied().collect();
    let mut out = Vec::new();
    for p in [pts, rev] {
        env.values.insert(
            "x".into(),
            ArrayD::from_shape_vec(IxDyn(&[1, 24, 2]), p).expect("shape"),
        );
        out.push(interp::run(g, &env, &["pred"]).expect("runs").remove(0));
    }
    assert_eq!(out[0].shape(), &[1, 10]);
    for (a, b) in out[0].iter().zip(out[1].iter()) {
        assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} vs {b}");
    }
}
