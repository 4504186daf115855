//! The environments replay gymnasium's reference trajectories to the bit: every number of
//! `../shared/data/{cartpole,pendulum}/*_reference.csv` (states, float32 observations,
//! rewards, flags) from the step-0 state and the recorded actions.

use dlc_runtime::envs::replay;

fn check(env: &str, file: &str, state_cols: &[&str]) {
    let Some(data) = dlc_tests::shared_data() else {
        eprintln!("skipped: no shared data folder (../shared/data or $DLC_SHARED_DATA)");
        return;
    };
    let text = std::fs::read_to_string(data.join(file)).expect("reference file");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let mut seeds: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    seeds.dedup();
    let mut compared = 0;
    for seed in seeds {
        let ep: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == seed).collect();
        let state: Vec<f64> = state_cols
            .iter()
            .map(|c| ep[0][col(c)].parse().unwrap())
            .collect();
        let actions: Vec<f64> = ep[1..]
            .iter()
            .map(|r| r[col("action")].parse().unwrap())
            .collect();
        let out = replay(env, &state, &actions).expect("replay");
        let mut got = out.lines();
        assert_eq!(
            got.next().unwrap().split(',').collect::<Vec<_>>(),
            header[1..]
        );
        let got: Vec<Vec<&str>> = got.map(|l| l.split(',').collect()).collect();
        assert_eq!(got.len(), ep.len(), "{env} seed {seed}: rows");
        for (g, r) in got.iter().zip(&ep) {
            for (a, b) in g.iter().zip(&r[1..]) {
                let (x, y): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{env} seed {seed} step {}: {a} != {b}",
                    r[1]
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "{env}: only {compared} numbers compared");
}

#[test]
fn cartpole_replays_gymnasium_exactly() {
    check(
        "cartpole",
        "cartpole/cartpole_v1_reference.csv",
        &["x", "x_dot", "theta", "theta_dot"],
    );
}

#[test]
fn pendulum_replays_gymnasium_exactly() {
    check(
        "pendulum",
        "pendulum/pendulum_v1_reference.csv",
        &["theta", "theta_dot"],
    );
}
