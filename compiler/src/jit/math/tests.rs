//! The inline math against f64 references over the whole f32 range: every 251st bit
//! pattern (both signs, subnormals, huge values, NaNs), dense sweeps of the intervals
//! where each function changes behaviour, and special values. Every input goes through
//! the F32X4 code and the F32 code, which must agree bit for bit.
//!
//! Where the f64 reference rounded to f32 is a normal float the relative error must be
//! ≤ 1e-6 (and at most `max_ulps` ulps, the bound that catches a wrong coefficient
//! whose effect stays under 1e-6); where it is exact (±0, ±inf, 1, 0.5 …) or NaN the
//! result must be the same; where it is subnormal or rounds to 0 the result must lie
//! between 0 and the smallest normal, on the right side.

use super::super::Jit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, InstBuilder, MemFlagsData, Signature, Type, UserFuncName, Value, types,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{Linkage, Module};
use std::cell::Cell;

thread_local! {
    /// Compile with a multiplication and an addition where `fma` would be used, as on a
    /// host without FMA.
    pub(super) static NO_FMA: Cell<bool> = const { Cell::new(false) };
}

/// `fn(src, dst, split, n)`: dst[i] = f(src[i]), F32X4 for i < split (a multiple of 4),
/// F32 for split ≤ i < n.
type Kernel = unsafe extern "C" fn(*const f32, *mut f32, u64, u64);
type MathFn = fn(&mut FunctionBuilder, Value) -> Value;

fn compile(jit: &mut Jit, f: MathFn) -> Kernel {
    let mut sig = Signature::new(jit.module.isa().default_call_conv());
    sig.params.extend([AbiParam::new(types::I64); 4]);
    jit.next_id += 1;
    let fid = jit
        .module
        .declare_function(&format!("math{}", jit.next_id), Linkage::Local, &sig)
        .unwrap();
    jit.ctx.func.signature = sig;
    jit.ctx.func.name = UserFuncName::user(0, fid.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut jit.ctx.func, &mut jit.fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let zero = b.ins().iconst(types::I64, 0);
        array_loop(&mut b, f, [p[0], p[1]], zero, p[2], types::F32X4);
        array_loop(&mut b, f, [p[0], p[1]], p[2], p[3], types::F32);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(jit.module.target_config());
    }
    jit.module.define_function(fid, &mut jit.ctx).unwrap();
    jit.module.clear_context(&mut jit.ctx);
    jit.module.finalize_definitions().unwrap();
    let code = jit.module.get_finalized_function(fid);
    // SAFETY: defined just above with this signature.
    unsafe { std::mem::transmute::<*const u8, Kernel>(code) }
}

/// `for i in (start..end).step_by(lanes of ty) { dst[i..] = f(src[i..]) }`.
fn array_loop(
    b: &mut FunctionBuilder,
    f: MathFn,
    [src, dst]: [Value; 2],
    start: Value,
    end: Value,
    ty: Type,
) {
    let (header, body, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(header, types::I64);
    b.ins().jump(header, &[start.into()]);
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, i, end);
    b.ins().brif(more, body, &[], exit, &[]);
    b.switch_to_block(body);
    let off = b.ins().imul_imm_s(i, 4);
    let a = b.ins().iadd(src, off);
    let x = b.ins().load(ty, MemFlagsData::trusted(), a, 0);
    let y = f(b, x);
    let a = b.ins().iadd(dst, off);
    b.ins().store(MemFlagsData::trusted(), y, a, 0);
    let next = b.ins().iadd_imm_s(i, ty.lane_count() as i64);
    b.ins().jump(header, &[next.into()]);
    b.switch_to_block(exit);
}

/// Run the kernel over `xs` through its vector loop (plus the scalar tail) and through
/// its scalar loop alone; both must give the same bits.
fn apply(k: Kernel, xs: &[f32]) -> Vec<f32> {
    let n = xs.len();
    let (mut v, mut s) = (vec![0.0f32; n], vec![0.0f32; n]);
    // SAFETY: both buffers hold n floats; the vector loop stops at a multiple of 4 ≤ n.
    unsafe {
        k(xs.as_ptr(), v.as_mut_ptr(), (n & !3) as u64, n as u64);
        k(xs.as_ptr(), s.as_mut_ptr(), 0, n as u64);
    }
    for i in 0..n {
        assert_eq!(
            v[i].to_bits(),
            s[i].to_bits(),
            "vector and scalar code differ at x = {:e}",
            xs[i]
        );
    }
    v
}

struct Spec {
    name: &'static str,
    f: MathFn,
    reference: fn(f64) -> f64,
    /// Inputs from which the result must be exactly this (saturation).
    saturated: fn(f32) -> Option<f32>,
    /// Intervals swept densely: (lo, hi, samples), every float when there are fewer.
    dense: &'static [(f32, f32, u32)],
    specials: &'static [(f32, f32)],
    max_ulps: f64,
}

#[derive(Default, Debug)]
struct Errors {
    max_rel: f64,
    max_ulps: f64,
    worst_x: f32,
    checked: usize,
    failures: Vec<String>,
}

impl Errors {
    fn check(&mut self, s: &Spec, x: f32, got: f32) {
        self.checked += 1;
        let want = (s.reference)(x as f64);
        let w = want as f32;
        let fail = |e: &mut Errors, why: &str| {
            if e.failures.len() < 20 {
                e.failures.push(format!(
                    "{}({x:e} = {:#010x}) = {got:e}, want {want:e} ({why})",
                    s.name,
                    x.to_bits()
                ));
            }
        };
        if let Some(sat) = (s.saturated)(x)
            && got.to_bits() != sat.to_bits()
        {
            fail(self, "must saturate exactly");
        }
        if want.is_nan() {
            if !got.is_nan() {
                fail(self, "want NaN");
            }
        } else if w as f64 == want {
            // ±0, ±inf and exact results such as exp(0) = 1, log(1) = 0, sigmoid(0) = ½.
            if got.to_bits() != w.to_bits() {
                fail(self, "exact value");
            }
        } else if w.is_infinite() {
            if got != w {
                fail(self, "overflow");
            }
        } else if w.is_normal() {
            let rel = (got as f64 - want).abs() / want.abs();
            let ulp = f32::from_bits(w.abs().to_bits() & 0x7f80_0000) as f64 / 8_388_608.0;
            let ulps = (got as f64 - want).abs() / ulp;
            if rel > self.max_rel || rel.is_nan() {
                self.worst_x = x;
            }
            self.max_rel = self.max_rel.max(rel);
            self.max_ulps = self.max_ulps.max(ulps);
            if rel > 1e-6 || rel.is_nan() {
                fail(self, "relative error > 1e-6");
            } else if ulps > s.max_ulps {
                fail(self, &format!("{ulps:.2} ulps > {}", s.max_ulps));
            }
        } else {
            // Subnormal or rounded to zero: between 0 and the smallest normal.
            let ok = got.abs() <= f32::MIN_POSITIVE
                && (got == 0.0 || got.is_sign_negative() == want.is_sign_negative());
            if !ok {
                fail(self, "want a subnormal or zero of the same sign");
            }
        }
    }
}

/// `count` floats evenly spaced in bit order over [lo, hi] (every one if there are fewer).
fn sweep(lo: f32, hi: f32, count: u32) -> Vec<f32> {
    // Floats in value order ↔ integers in order.
    let key = |x: f32| {
        let b = x.to_bits() as i64;
        if b >> 31 == 1 { -(b & 0x7fff_ffff) } else { b }
    };
    let unkey = |k: i64| {
        if k < 0 {
            f32::from_bits((-k) as u32 | 0x8000_0000)
        } else {
            f32::from_bits(k as u32)
        }
    };
    let (a, b) = (key(lo), key(hi));
    let step = ((b - a) / count as i64).max(1);
    (0..)
        .map(|i| a + i * step)
        .take_while(|&k| k <= b)
        .map(unkey)
        .collect()
}

fn run(s: &Spec, no_fma: bool) -> Errors {
    let mut jit = Jit::new().unwrap();
    NO_FMA.set(no_fma);
    let k = compile(&mut jit, s.f);
    NO_FMA.set(false);
    let mut e = Errors::default();
    let batch = |xs: &[f32], e: &mut Errors| {
        for (&x, y) in xs.iter().zip(apply(k, xs)) {
            e.check(s, x, y);
        }
    };
    // Every 251st bit pattern of all 2^32 (the last batch is not a multiple of 4).
    const STRIDE: u64 = 251;
    const BATCH: u64 = 1 << 20;
    let total = (1u64 << 32).div_ceil(STRIDE);
    for start in (0..total).step_by(BATCH as usize) {
        let xs: Vec<f32> = (start..(start + BATCH).min(total))
            .map(|i| f32::from_bits((i * STRIDE) as u32))
            .collect();
        batch(&xs, &mut e);
    }
    for &(lo, hi, count) in s.dense {
        batch(&sweep(lo, hi, count), &mut e);
    }
    let mut specials: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        f32::from_bits(0x807f_ffff),
        1.0,
        -1.0,
    ];
    specials.extend(s.specials.iter().map(|p| p.0));
    batch(&specials, &mut e);
    // The specials' exact values.
    let xs: Vec<f32> = s.specials.iter().map(|p| p.0).collect();
    for (&(x, want), got) in s.specials.iter().zip(apply(k, &xs)) {
        let same = got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan();
        assert!(same, "{}({x:e}) = {got:e}, want {want:e}", s.name);
    }
    e
}

/// Check `s` as compiled for this host, and without `fma` (as for a host without FMA).
fn assert_accurate(s: &Spec) {
    for no_fma in [false, true] {
        let e = run(s, no_fma);
        let how = if no_fma {
            "without fma"
        } else {
            "as on this host"
        };
        println!(
            "{} ({how}): {} inputs, max relative error {:.3e} ({:.2} ulps) at x = {:e}",
            s.name, e.checked, e.max_rel, e.max_ulps, e.worst_x
        );
        assert!(
            e.failures.is_empty(),
            "{} ({how}) failures:\n{}",
            s.name,
            e.failures.join("\n")
        );
    }
}

const INF: f32 = f32::INFINITY;
const NAN: f32 = f32::NAN;
const M: u32 = 1_000_000;

#[test]
fn exp_is_accurate_over_all_f32() {
    assert_accurate(&Spec {
        name: "exp",
        f: super::exp,
        reference: f64::exp,
        saturated: |_| None,
        dense: &[
            (-104.0, 89.0, 4 * M),
            (-1.0, 1.0, M),
            (-1e-3, 1e-3, M),
            (88.70, 88.76, M),   // overflow to +inf at 88.72284
            (-87.40, -87.30, M), // results leave the normal range at −87.3365
            (-104.2, -103.2, M), // the last subnormals; 0 below −103.97
            (-1e-6, 1e-6, 100_000),
        ],
        specials: &[
            (0.0, 1.0),
            (-0.0, 1.0),
            (INF, INF),
            (-INF, 0.0),
            (NAN, NAN),
            (88.72284, INF),
            (89.0, INF),
            (1e30, INF),
            (-104.0, 0.0),
            (-1e30, 0.0),
            (-1e-30, 1.0),
        ],
        max_ulps: 1.5,
    });
}

#[test]
fn log_is_accurate_over_all_f32() {
    assert_accurate(&Spec {
        name: "log",
        f: super::log,
        reference: f64::ln,
        saturated: |_| None,
        dense: &[
            (0.5, 2.0, 4 * M),
            (0.99, 1.01, M),
            (0.7, 0.71, M), // the switch of exponent at √½
            (1.41, 1.42, M),
            (0.0, f32::MIN_POSITIVE, M), // subnormals
            (f32::MIN_POSITIVE, 1e-37, M),
            (1e37, f32::MAX, M),
            (1e-3, 1e3, 4 * M),
        ],
        specials: &[
            (0.0, -INF),
            (-0.0, -INF),
            (INF, INF),
            (-INF, NAN),
            (-1.0, NAN),
            (-1e-45, NAN),
            (NAN, NAN),
            (1.0, 0.0),
        ],
        max_ulps: 1.5,
    });
}

#[test]
fn tanh_is_accurate_over_all_f32() {
    assert_accurate(&Spec {
        name: "tanh",
        f: super::tanh,
        reference: f64::tanh,
        saturated: |x| (x.abs() >= 9.1).then_some(1.0f32.copysign(x)),
        dense: &[
            (-10.0, 10.0, 4 * M),
            (0.6, 0.65, M), // the switch of formula at 0.625
            (-0.65, -0.6, M),
            (-1e-3, 1e-3, M),
            (8.5, 9.5, M), // saturation
            (-9.5, -8.5, M),
        ],
        specials: &[
            (0.0, 0.0),
            (-0.0, -0.0),
            (INF, 1.0),
            (-INF, -1.0),
            (20.0, 1.0),
            (-20.0, -1.0),
            (NAN, NAN),
            (1e-40, 1e-40),
            (-1e-40, -1e-40),
        ],
        max_ulps: 2.0,
    });
}

#[test]
fn sigmoid_is_accurate_over_all_f32() {
    assert_accurate(&Spec {
        name: "sigmoid",
        f: super::sigmoid,
        reference: |x| 1.0 / (1.0 + (-x).exp()),
        saturated: |x| (x >= 17.4).then_some(1.0),
        dense: &[
            (-100.0, 100.0, 4 * M),
            (-1.0, 1.0, M),
            (-87.4, -87.3, M), // results leave the normal range
            (-104.0, -86.0, M),
            (16.0, 18.0, M), // saturation to 1
        ],
        specials: &[
            (-INF, 0.0),
            (INF, 1.0),
            (0.0, 0.5),
            (-0.0, 0.5),
            (NAN, NAN),
            (-200.0, 0.0),
            (100.0, 1.0),
        ],
        max_ulps: 3.0,
    });
}

extern "C" fn expf_by_call(x: f32) -> f32 {
    x.exp()
}

/// What the loops did before: `f32::exp` called lane by lane.
fn exp_by_calls(b: &mut FunctionBuilder, x: Value) -> Value {
    let mut sig = Signature::new(b.func.signature.call_conv);
    sig.params.push(AbiParam::new(types::F32));
    sig.returns.push(AbiParam::new(types::F32));
    let sig = b.import_signature(sig);
    let f = b.ins().iconst(types::I64, expf_by_call as *const u8 as i64);
    let call = |b: &mut FunctionBuilder, v: Value| {
        let c = b.ins().call_indirect(sig, f, &[v]);
        b.inst_results(c)[0]
    };
    if b.func.dfg.value_type(x) == types::F32 {
        return call(b, x);
    }
    let mut out = x;
    for lane in 0..4 {
        let v = b.ins().extractlane(x, lane);
        let r = call(b, v);
        out = b.ins().insertlane(out, r, lane);
    }
    out
}

/// Nanoseconds per element, in-cache: `cargo test --release -p dlc-compiler --lib
/// math_speed -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check: run by hand to measure ns per element"]
fn math_speed() {
    let mut jit = Jit::new().unwrap();
    let xs: Vec<f32> = (0..4096).map(|i| (i as f32 - 2048.0) / 200.0).collect();
    let mut out = vec![0.0f32; xs.len()];
    let n = xs.len() as u64;
    let fns: [(&str, MathFn); 5] = [
        ("exp", super::exp),
        ("exp by calls", exp_by_calls),
        ("log", super::log),
        ("tanh", super::tanh),
        ("sigmoid", super::sigmoid),
    ];
    for (name, f) in fns {
        let k = compile(&mut jit, f);
        for (how, split) in [("F32X4", n), ("F32", 0)] {
            let reps = 2000;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    // SAFETY: both buffers hold n floats.
                    unsafe { k(xs.as_ptr(), out.as_mut_ptr(), split, n) };
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e9 / (reps as f64 * n as f64));
            }
            println!("{name:>13} {how:>5}: {best:.2} ns/element");
        }
    }
}
