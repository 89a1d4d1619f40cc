"""Emulates, in numpy, the statistics error of operand splits for the
E-step against float64, on estep_bench's mixture (components 2.5/sqrt(D)
apart, variances 0.3..1.5), normwise over the first N rows as estep_bench
checks them. The question: can fewer than three products per GEMM keep
1e-4? Run on the CPU:
    /usr/bin/python3 bench/split_emulation.py 8192 1024 128
bf16 and fp16 roundings are round-to-nearest-even; the GEMMs accumulate in
float32 in numpy's order, not the kernels' (the medians do not notice:
the split-bf16 and plain-bf16 rows reproduce the GPU's measured errors).
"""
import sys

import numpy as np

rng = np.random.default_rng(1)


def bf16(a):
    a = np.asarray(a, np.float32)
    b = a.view(np.uint32).astype(np.uint64)
    return (((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def split(a, f):
    h = f(a)
    return h, f(np.asarray(a, np.float32) - h)


N, K, D = (int(v) for v in sys.argv[1:4])
pi = 0.5 + rng.uniform(size=K)
pi /= pi.sum()
mu = 2.5 / np.sqrt(D) * rng.normal(size=(K, D))
var = 0.3 + 1.2 * rng.uniform(size=(K, D))
k = rng.choice(K, N, p=pi)
x = (mu[k] + np.sqrt(var[k]) * rng.normal(size=(N, D))).astype(np.float32).astype(np.float64)
shift = pi @ mu
y = x - shift
m = mu - shift
W = np.concatenate([(m / var).T, (-0.5 / var).T], 0)  # 2D x K
c = np.log(pi) - 0.5 * (D * np.log(2 * np.pi) + np.log(var).sum(1) + (m * m / var).sum(1))
Y = np.concatenate([y, y * y], 1)


def stats(R, YR):
    S = R.T @ YR
    return R.sum(0), S[:, :D], S[:, D:]


L = Y @ W + c
R = np.exp(L - np.logaddexp.reduce(L, 1)[:, None])
ref = stats(R, Y)


def run(name, logits, stat):
    Lf = logits().astype(np.float64) + c
    lse = np.log(np.exp(Lf - Lf.max(1, keepdims=True)).sum(1)) + Lf.max(1)
    Rf = np.exp(Lf.astype(np.float32) - lse[:, None].astype(np.float32)).astype(np.float32)
    got = (Rf.sum(0),) + tuple(np.split(stat(Rf), 2, 1))
    e = [np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i]) for i in range(3)]
    print(f"{name:52s} nk {e[0]:.1e}  sum ry {e[1]:.1e}  sum ry2 {e[2]:.1e}")


Y32, W32 = Y.astype(np.float32), W.astype(np.float32)
yh, yl = split(Y32, bf16)
wh, wl = split(W32, bf16)
fy = f16(Y32)
fwh, fwl = split(W32, f16)
L3 = lambda: yh @ wh + yh @ wl + yl @ wh
S3 = lambda R: (lambda rh, rl: rh.T @ yh + rh.T @ yl + rl.T @ yh)(*split(R, bf16))
print(f"N={N} K={K} D={D}")
run("split bf16, 3 + 3 products (the default)", L3, S3)
run("plain bf16, 1 + 1 (fast)", lambda: yh @ wh, lambda R: bf16(R).T @ yh)
run("fp16 rows, W split fp16: 2; statistics fp16: 1", lambda: fy @ fwh + fy @ fwl, lambda R: f16(R).T @ fy)
run("fp16 rows, W split fp16: 2; statistics split bf16: 3", lambda: fy @ fwh + fy @ fwl, S3)
run("split bf16 logits: 3; statistics fp16: 1", L3, lambda R: f16(R).T @ fy)
run("split bf16 logits: 3; R fp16 x Y split bf16: 2", L3, lambda R: f16(R).T @ (yh + yl))
run("split bf16 logits: 3; R bf16 x Y split bf16: 2", L3, lambda R: bf16(R).T @ (yh + yl))
run("fp16 1 + 1", lambda: fy @ fwh, lambda R: f16(R).T @ fy)
