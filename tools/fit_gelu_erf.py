"""Fits the rational erf of the AVX2 GELU (csrc/cpu/quantize.cpp, gelu_avx2):

    erf(x / sqrt 2) ~ x P(x^2) / Q(x^2) on [0, X],  P of degree M, Q of degree N with q0 = 1,

minimax for the absolute erf error, by iterated linearized least squares (P(t) x - erf Q(t) = 0, weighted
by 1 / Q and, after 20 rounds, Lawson's update toward equal ripples), in float64. Then evaluates GELU
the way the kernel does (a = min(|x|, X), Horner in float32 with FMA, erf = min(a P / Q, 1) with x's
sign, GELU = hx + hx erf) against float64 and prints the worst error relative to max(1, |x|), and the
coefficients as C++ floats. Usage: python tools/fit_gelu_erf.py [M N X]  (default 5 5 5.544)."""
import math
import sys

import numpy as np


def fit(m: int, n: int, x_max: float):
    erf = np.vectorize(math.erf)
    x = x_max * (1 - np.cos(np.linspace(0, math.pi, 4000))) / 2  # Chebyshev-spaced: dense at both ends
    x = x[x > 0]
    t, f = x * x, erf(x / math.sqrt(2))
    weight, q_at = np.ones_like(x), np.ones_like(x)
    for step in range(200):
        a = np.hstack([np.vander(t, m + 1, increasing=True) * x[:, None],
                       -f[:, None] * np.vander(t, n + 1, increasing=True)[:, 1:]])
        scale = np.sqrt(weight) / q_at
        c, *_ = np.linalg.lstsq(a * scale[:, None], f * scale, rcond=None)
        p, q = c[:m + 1], np.concatenate([[1.0], c[m + 1:]])
        q_at = np.polyval(q[::-1], t)
        err = np.abs(x * np.polyval(p[::-1], t) / q_at - f)
        if step > 20:
            weight = weight * np.sqrt(err + 1e-300)
            weight /= weight.sum()
    return p.astype(np.float32), q.astype(np.float32), float(err.max())


def kernel_gelu(xs, p, q, x_max):
    f32 = np.float32
    a = np.minimum(np.abs(xs), f32(x_max))
    w = (a * a).astype(f32)

    def horner(c):
        r = np.full_like(w, c[-1])
        for ci in c[-2::-1]:
            r = (r.astype(np.float64) * w + np.float64(ci)).astype(f32)  # one rounding: an FMA
        return r

    erf = np.minimum((a * horner(p)).astype(f32) / horner(q), f32(1)).astype(f32) * np.sign(xs).astype(f32)
    hx = (xs * f32(0.5)).astype(f32)
    return (hx.astype(np.float64) * erf + hx).astype(f32)


def main():
    m, n, x_max = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (5, 5, 5.544)
    p, q, err64 = fit(m, n, x_max)
    xs = np.linspace(-12, 12, 4_000_001).astype(np.float32)
    erf = np.vectorize(math.erf)
    exact = xs.astype(np.float64) * 0.5 * (1 + erf(xs.astype(np.float64) / math.sqrt(2)))
    rel = np.abs(kernel_gelu(xs, p, q, x_max) - exact) / np.maximum(1, np.abs(xs))
    print(f"P degree {m}, Q degree {n} on [0, {x_max}]: erf error {err64:.2e} in float64; GELU in float32 "
          f"{rel.max():.2e} of max(1, |x|) at x = {xs[rel.argmax()]:.4f}")
    print("P (from p0):", ", ".join(f"{v:.8e}f" for v in p))
    print("Q (from q0):", ", ".join(f"{v:.8e}f" for v in q))


if __name__ == "__main__":
    main()
