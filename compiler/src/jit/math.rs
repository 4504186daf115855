//! Inline `exp`, `log`, `tanh` and `sigmoid` for the JIT: straight-line CLIF (no calls,
//! no branches; special cases are picked with masks) for an `F32` or `F32X4` value.
//!
//! The algorithms and coefficients are those of Cephes' single-precision `expf`, `logf`
//! and `tanhf` (Stephen L. Moshier, Cephes Math Library 2.2), with the exponent taken
//! apart and put together through the float's bits. Relative error is at most a few ulps
//! (≤ 1e-6, checked over the whole f32 range by the tests in `math/tests.rs`) wherever
//! the result is a normal float; infinities, zeros and NaN come out as IEEE says.
//!
//! The code is written for `F32X4`; a scalar is splatted, computed on four lanes and
//! lane 0 taken back, so the scalar tail of a loop gives the same bits as its vector body
//! at the cost of a splat and an extract.

// The Cephes constants are kept digit for digit, as published.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;

/// `e^x`.
pub fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    on_lanes(b, x, exp4)
}

/// `ln x`.
pub fn log(b: &mut FunctionBuilder, x: Value) -> Value {
    on_lanes(b, x, log4)
}

/// `tanh x`.
pub fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    on_lanes(b, x, tanh4)
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    on_lanes(b, x, |b, x| {
        let nx = b.ins().fneg(x);
        let e = exp4(b, nx);
        let one = splat(b, 1.0);
        let d = b.ins().fadd(one, e);
        b.ins().fdiv(one, d)
    })
}

/// Cephes `expf`: n = round(x·log2 e), r = x − n·ln 2 in two parts (Cody–Waite),
/// e^r ≈ 1 + r + r²·P(r), then the result scaled by 2^n in two halves so that neither
/// factor leaves the normal range (results that underflow are rounded once, in the last
/// multiplication). x is first clamped to [−104, 88.75]: below −104 the result is 0,
/// above ln(f32::MAX) = 88.7228 it overflows to +inf; NaN passes through the clamp.
fn exp4(b: &mut FunctionBuilder, x: Value) -> Value {
    let x = min(b, 88.75, x);
    let x = max(b, -104.0, x);
    // n = round(x·log2 e): adding 1.5·2^23 leaves n in the low bits of the float.
    let shifter = 1.5 * 8_388_608.0;
    let t = mul_add(b, x, std::f32::consts::LOG2_E, shifter);
    let c = splat(b, shifter);
    let n = b.ins().fsub(t, c);
    let (t, c) = (bits(b, t), bits(b, c));
    let ni = b.ins().isub(t, c);
    // r = x − n·ln 2, with ln 2 = 0.693359375 − 2.12194440e-4 (n·0.693359375 is exact).
    let r = mul_add_v(b, n, -0.693359375, x);
    let r = mul_add_v(b, n, 2.12194440e-4, r);
    let p = poly(
        b,
        r,
        &[
            1.9875691500e-4,
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ],
    );
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fmul(p, r2);
    let p = b.ins().fadd(p, r);
    let one = splat(b, 1.0);
    let p = b.ins().fadd(p, one);
    // 2^n = 2^n1 · 2^n2 with n1 = n >> 1 and n2 = n − n1, both in [−75, 64].
    let n1 = b.ins().sshr_imm_u(ni, 1);
    let n2 = b.ins().isub(ni, n1);
    let (s1, s2) = (pow2(b, n1), pow2(b, n2));
    let p = b.ins().fmul(p, s1);
    b.ins().fmul(p, s2)
}

/// Cephes `logf`: x = m·2^k with m in [√½, √2) taken from the bits (subnormal x scaled
/// by 2^23 first), f = m − 1, ln m ≈ f − f²/2 + f³·P(f), plus k·ln 2 in two parts.
fn log4(b: &mut FunctionBuilder, x: Value) -> Value {
    let tiny = cmp(b, FloatCC::LessThan, x, f32::MIN_POSITIVE);
    let two23 = splat(b, 8_388_608.0);
    let big = b.ins().fmul(x, two23);
    let xs = b.ins().bitselect(tiny, big, x);
    // k = exponent of x/√½, m = x / 2^k: subtracting the bits of √½ moves the
    // boundary between exponents from 1 to √½.
    let sqrt_half = isplat(b, 0x3f35_04f3);
    let xb = bits(b, xs);
    let ix = b.ins().isub(xb, sqrt_half);
    let k = b.ins().sshr_imm_u(ix, 23);
    let k = b.ins().fcvt_from_sint(types::F32X4, k);
    let c23 = splat(b, 23.0);
    let adj = b.ins().band(tiny, c23);
    let k = b.ins().fsub(k, adj);
    let mant = isplat(b, 0x007f_ffff);
    let m = b.ins().band(ix, mant);
    let m = b.ins().iadd(m, sqrt_half);
    let m = float(b, m);
    let one = splat(b, 1.0);
    let f = b.ins().fsub(m, one);
    let p = poly(
        b,
        f,
        &[
            7.0376836292e-2,
            -1.1514610310e-1,
            1.1676998740e-1,
            -1.2420140846e-1,
            1.4249322787e-1,
            -1.6668057665e-1,
            2.0000714765e-1,
            -2.4999993993e-1,
            3.3333331174e-1,
        ],
    );
    let f2 = b.ins().fmul(f, f);
    let y = b.ins().fmul(p, f);
    let y = b.ins().fmul(y, f2);
    let y = mul_add_v(b, k, -2.12194440e-4, y);
    let y = mul_add_v(b, f2, -0.5, y);
    let r = b.ins().fadd(f, y);
    let r = mul_add_v(b, k, 0.693359375, r);
    // log(+inf) = +inf, log(±0) = −inf, log(x < 0) = log(NaN) = NaN.
    let r = pick(b, FloatCC::Equal, x, f32::INFINITY, f32::INFINITY, r);
    let r = pick(b, FloatCC::Equal, x, 0.0, f32::NEG_INFINITY, r);
    pick(b, FloatCC::UnorderedOrLessThan, x, 0.0, f32::NAN, r)
}

/// Cephes `tanhf` on |x|: below 0.625 the odd polynomial x + x³·P(x²), above it
/// 1 − 2/(e^{2|x|} + 1) (which is exactly 1 from |x| ≈ 9 on); then x's sign is put back,
/// so tanh(−0) = −0.
fn tanh4(b: &mut FunctionBuilder, x: Value) -> Value {
    let ax = b.ins().fabs(x);
    let z = b.ins().fmul(ax, ax);
    let p = poly(
        b,
        z,
        &[
            -5.70498872745e-3,
            2.06390887954e-2,
            -5.37397155531e-2,
            1.33314422036e-1,
            -3.33332819422e-1,
        ],
    );
    let p = b.ins().fmul(p, z);
    let small = fma(b, p, ax, ax);
    let two_ax = b.ins().fadd(ax, ax);
    let e = exp4(b, two_ax);
    let one = splat(b, 1.0);
    let e1 = b.ins().fadd(e, one);
    let two = splat(b, 2.0);
    let q = b.ins().fdiv(two, e1);
    let large = b.ins().fsub(one, q);
    let is_large = cmp(b, FloatCC::GreaterThanOrEqual, ax, 0.625);
    let r = b.ins().bitselect(is_large, large, small);
    // r ≥ 0 (or NaN): or in the sign bit of x.
    let sign_bit = splat(b, -0.0);
    let sign = b.ins().band(x, sign_bit);
    b.ins().bor(r, sign)
}

/// Apply `f`, written for `F32X4`, to an `F32` or `F32X4` value.
fn on_lanes(
    b: &mut FunctionBuilder,
    x: Value,
    f: impl FnOnce(&mut FunctionBuilder, Value) -> Value,
) -> Value {
    match b.func.dfg.value_type(x) {
        types::F32X4 => f(b, x),
        types::F32 => {
            let v = b.ins().splat(types::F32X4, x);
            let r = f(b, v);
            b.ins().extractlane(r, 0)
        }
        t => panic!("math on {t}: expected f32 or f32x4"),
    }
}

fn splat(b: &mut FunctionBuilder, v: f32) -> Value {
    let c = b.ins().f32const(v);
    b.ins().splat(types::F32X4, c)
}

fn isplat(b: &mut FunctionBuilder, v: i32) -> Value {
    let c = b.ins().iconst(types::I32, v as i64);
    b.ins().splat(types::I32X4, c)
}

fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

fn bits(b: &mut FunctionBuilder, x: Value) -> Value {
    b.ins().bitcast(types::I32X4, little(), x)
}

fn float(b: &mut FunctionBuilder, i: Value) -> Value {
    b.ins().bitcast(types::F32X4, little(), i)
}

/// All-ones lanes where `x cc c`, as an `F32X4` mask for `bitselect`/`band`.
fn cmp(b: &mut FunctionBuilder, cc: FloatCC, x: Value, c: f32) -> Value {
    let c = splat(b, c);
    let m = b.ins().fcmp(cc, x, c);
    float(b, m)
}

/// `then` where `x cc c`, else `r`.
fn pick(b: &mut FunctionBuilder, cc: FloatCC, x: Value, c: f32, then: f32, r: Value) -> Value {
    let m = cmp(b, cc, x, c);
    let t = splat(b, then);
    b.ins().bitselect(m, t, r)
}

/// min(a, x), NaN x passing through (one `minps`).
fn min(b: &mut FunctionBuilder, a: f32, x: Value) -> Value {
    let a = splat(b, a);
    let lt = b.ins().fcmp(FloatCC::LessThan, a, x);
    let lt = float(b, lt);
    b.ins().bitselect(lt, a, x)
}

/// max(a, x), NaN x passing through (one `maxps`).
fn max(b: &mut FunctionBuilder, a: f32, x: Value) -> Value {
    let a = splat(b, a);
    let lt = b.ins().fcmp(FloatCC::LessThan, x, a);
    let lt = float(b, lt);
    b.ins().bitselect(lt, a, x)
}

/// x·a + c for constants a and c.
fn mul_add(b: &mut FunctionBuilder, x: Value, a: f32, c: f32) -> Value {
    let c = splat(b, c);
    mul_add_v(b, x, a, c)
}

/// x·a + y for a constant a.
fn mul_add_v(b: &mut FunctionBuilder, x: Value, a: f32, y: Value) -> Value {
    let a = splat(b, a);
    fma(b, x, a, y)
}

/// Horner: c[0]·x^(n−1) + … + c[n−1].
fn poly(b: &mut FunctionBuilder, x: Value, c: &[f32]) -> Value {
    let mut p = splat(b, c[0]);
    for &k in &c[1..] {
        let k = splat(b, k);
        p = fma(b, p, x, k);
    }
    p
}

/// x·y + z, fused where the host has FMA. The JIT compiles for the host
/// (`cranelift_native`), and Cranelift lowers `fma` on an x86-64 without FMA to a call of
/// `fmaf`: there a multiplication and an addition (the algorithms need no fusing).
fn fma(b: &mut FunctionBuilder, x: Value, y: Value, z: Value) -> Value {
    if host_fma() {
        b.ins().fma(x, y, z)
    } else {
        let m = b.ins().fmul(x, y);
        b.ins().fadd(m, z)
    }
}

/// Whether `fma` is one instruction on the host: on x86-64, Cranelift's x64 backend
/// needs FMA and AVX, which `cranelift_native` enables when the CPU has them; the other
/// backends always have it.
fn host_fma() -> bool {
    #[cfg(test)]
    if tests::NO_FMA.get() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    return true;
}

/// 2^n as a float, for n in the normal exponent range.
fn pow2(b: &mut FunctionBuilder, n: Value) -> Value {
    let bias = isplat(b, 127);
    let e = b.ins().iadd(n, bias);
    let e = b.ins().ishl_imm_u(e, 23);
    float(b, e)
}

#[cfg(test)]
mod tests;
