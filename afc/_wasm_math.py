"""WebAssembly text for the f32x4 math kernels: exp, expm1, log1p and every activation.

WebAssembly has no exp, tanh, erf or log instruction, so each is built here from range reduction plus a
polynomial, in float32 SIMD. Every function takes and returns one ``v128`` of four float32 lanes, keeps NaN
as NaN (wasm's ``f32x4.min``/``max`` propagate NaN, so they double as NaN-safe clamps) and agrees with numpy's
float64 result within 2e-6 relative error (absolute floor 1.2e-38 where the float32 result is subnormal);
tests/afc/test_wasm_activations.py checks that over a dense sweep of the float32 domain.
"""

from __future__ import annotations

import numpy as np

# the erfc fit the trainer uses too, so both agree on gelu
from afcore.learning import ERFC_P

__all__ = ["ACTIVATION_FUNCS", "MATH_WAT", "f32x4", "i32x4"]


def f32x4(value: float) -> str:
    """Return a ``v128.const`` with ``value`` (rounded to float32) in all four lanes, written exactly in hex."""
    text = float(np.float32(value)).hex()
    return f"(v128.const f32x4 {text} {text} {text} {text})"


def i32x4(value: int) -> str:
    """Return a ``v128.const`` with the int32 ``value`` in all four lanes."""
    return f"(v128.const i32x4 {value} {value} {value} {value})"


def _horner(var: str, coefficients: list[float]) -> str:
    """Return WAT for ``c0 + var*(c1 + var*(c2 + ...))``, evaluated in float32."""
    expr = f32x4(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        expr = f"(f32x4.add {f32x4(c)} (f32x4.mul (local.get {var}) {expr}))"
    return expr


_FACT = [1.0, 1.0, 2.0, 6.0, 24.0, 120.0, 720.0, 5040.0, 40320.0]
#: ln 2 split so that k * LN2_HI is exact for |k| <= 255 (Cody-Waite range reduction)
LN2_HI = 0.693145751953125
#: the rest of ln 2
LN2_LO = 1.428606820309417232e-06
#: |x| below which expm1 uses its own polynomial instead of exp(x) - 1 (avoids cancellation)
EXPM1_SMALL = 0.35

_EXP = f"""
  (func $exp (param $x v128) (result v128)
    (local $k v128) (local $r v128) (local $ki v128) (local $k1 v128)
    ;; clamp keeps NaN; exp(89) overflows to inf and exp(-104) rounds to 0 as they must
    (local.set $x (f32x4.min (f32x4.max (local.get $x) {f32x4(-104.0)}) {f32x4(89.0)}))
    (local.set $k (f32x4.nearest (f32x4.mul (local.get $x) {f32x4(1.4426950408889634)})))
    (local.set $r (f32x4.sub (f32x4.sub (local.get $x) (f32x4.mul (local.get $k) {f32x4(LN2_HI)}))
                             (f32x4.mul (local.get $k) {f32x4(LN2_LO)})))
    (local.set $ki (i32x4.trunc_sat_f32x4_s (local.get $k)))
    ;; scale by 2^k as 2^k1 * 2^(k-k1): each factor stays a normal float, so results that are
    ;; subnormal (k < -126) are rounded once, by the last multiply
    (local.set $k1 (i32x4.shr_s (local.get $ki) (i32.const 1)))
    (f32x4.mul
      (f32x4.mul {_horner("$r", [1.0 / f for f in _FACT[:8]])}
                 (i32x4.shl (i32x4.add (local.get $k1) {i32x4(127)}) (i32.const 23)))
      (i32x4.shl (i32x4.add (i32x4.sub (local.get $ki) (local.get $k1)) {i32x4(127)}) (i32.const 23))))
"""

_EXPM1 = f"""
  (func $expm1 (param $x v128) (result v128)
    (v128.bitselect
      ;; x + x^2 (1/2! + x/3! + ... + x^5/7!): no cancellation near 0
      (f32x4.add (local.get $x)
                 (f32x4.mul (f32x4.mul (local.get $x) (local.get $x))
                            {_horner("$x", [1.0 / f for f in _FACT[2:8]])}))
      (f32x4.sub (call $exp (local.get $x)) {f32x4(1.0)})
      (f32x4.lt (f32x4.abs (local.get $x)) {f32x4(EXPM1_SMALL)})))
"""

_LOG1P = f"""
  (func $log1p01 (param $u v128) (result v128)
    ;; log1p(u) for u in [0, 1] (and NaN): 2 atanh(s) with s = u/(2+u) <= 1/3, odd series to s^15
    (local $s v128) (local $s2 v128)
    (local.set $s (f32x4.div (local.get $u) (f32x4.add (local.get $u) {f32x4(2.0)})))
    (local.set $s2 (f32x4.mul (local.get $s) (local.get $s)))
    (f32x4.mul (f32x4.add (local.get $s) (local.get $s))
               {_horner("$s2", [1.0 / (2 * i + 1) for i in range(8)])}))
"""

_ERFC_HALF = f"""
  (func $half_erfc_scaled (param $a v128) (result v128)
    ;; 0.5 * erfc(a / sqrt 2) for a = |x| in [0, 20] (and NaN). exp(-a^2/2) is computed as
    ;; exp(-ah^2/2) * exp(-al (ah + al/2)) with ah = a's top 12 bits, so that ah^2/2 is exact: a rounded
    ;; a^2 would cost a^2 * 6e-8 relative error, 5e-6 at a = 13
    (local $ah v128) (local $al v128) (local $t v128)
    (local.set $ah (v128.and (local.get $a) {i32x4(-4096)}))
    (local.set $al (f32x4.sub (local.get $a) (local.get $ah)))
    (local.set $t (f32x4.div {f32x4(1.0)}
                             (f32x4.add {f32x4(1.0)} (f32x4.mul (local.get $a) {f32x4(0.5 * 0.7071067811865476)}))))
    (f32x4.mul
      (f32x4.mul (f32x4.mul (local.get $t) {f32x4(0.5)})
                 (call $exp {_horner("$t", ERFC_P)}))
      (f32x4.mul
        (call $exp (f32x4.mul (f32x4.mul (local.get $ah) (local.get $ah)) {f32x4(-0.5)}))
        (call $exp (f32x4.neg (f32x4.mul (local.get $al)
                                         (f32x4.add (local.get $ah) (f32x4.mul (local.get $al) {f32x4(0.5)}))))))))
"""

_ACTIVATIONS = f"""
  (func $act_relu (param $x v128) (result v128)
    (f32x4.max (local.get $x) {f32x4(0.0)}))
  (func $act_linear (param $x v128) (result v128)
    (local.get $x))
  (func $act_leaky_relu (param $x v128) (result v128)
    (v128.bitselect (local.get $x) (f32x4.mul (local.get $x) {f32x4(0.01)})
                    (f32x4.gt (local.get $x) {f32x4(0.0)})))
  (func $act_elu (param $x v128) (result v128)
    (v128.bitselect (local.get $x) (call $expm1 (local.get $x))
                    (f32x4.gt (local.get $x) {f32x4(0.0)})))
  (func $act_sigmoid (param $x v128) (result v128)
    (f32x4.div {f32x4(1.0)} (f32x4.add {f32x4(1.0)} (call $exp (f32x4.neg (local.get $x))))))
  (func $act_tanh (param $x v128) (result v128)
    ;; tanh|x| = -e/(2+e) with e = expm1(-2|x|): accurate relative to the result near 0; sign copied back
    (local $e v128)
    (local.set $e (call $expm1 (f32x4.mul (f32x4.abs (local.get $x)) {f32x4(-2.0)})))
    (v128.or (f32x4.div (f32x4.neg (local.get $e)) (f32x4.add (local.get $e) {f32x4(2.0)}))
             (v128.and (local.get $x) {i32x4(-2147483648)})))
  (func $act_softplus (param $x v128) (result v128)
    ;; max(x, 0) + log1p(exp(-|x|)): never overflows, exact-relative for very negative x
    (f32x4.add (f32x4.max (local.get $x) {f32x4(0.0)})
               (call $log1p01 (call $exp (f32x4.neg (f32x4.abs (local.get $x)))))))
  (func $act_gelu (param $x v128) (result v128)
    ;; x * Phi(x), Phi(x) = h or 1 - h with h = erfc(|x|/sqrt 2)/2; x >= -20 makes gelu(-inf) = -0, its limit
    (local $h v128)
    (local.set $x (f32x4.max (local.get $x) {f32x4(-20.0)}))
    (local.set $h (call $half_erfc_scaled (f32x4.min (f32x4.abs (local.get $x)) {f32x4(20.0)})))
    (f32x4.mul (local.get $x)
               (v128.bitselect (local.get $h) (f32x4.sub {f32x4(1.0)} (local.get $h))
                               (f32x4.lt (local.get $x) {f32x4(0.0)}))))
"""

#: the math and activation functions, as module fields in WebAssembly text
MATH_WAT = _EXP + _EXPM1 + _LOG1P + _ERFC_HALF + _ACTIVATIONS

#: activation name -> the WAT function implementing it on one v128
ACTIVATION_FUNCS = {
    name: f"$act_{name}"
    for name in ("relu", "linear", "leaky_relu", "elu", "sigmoid", "tanh", "softplus", "gelu")
}
