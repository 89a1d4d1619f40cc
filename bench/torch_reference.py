"""The materialising EM step, as TorchGMM and PyCave do it, for comparison
with flashgmm's fused kernel on the same GPU. Runs on the device machine
(PyTorch is there; it is never a dependency of flashgmm).

usage: torch_reference.py N K D   -> median ms per E+M step (fp32 and tf32),
                                     extra GPU memory, bf16 matmul ceiling
"""
import sys

import torch

n, k, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
x = torch.randn(n, d, device=dev, generator=g)
mu = torch.randn(k, d, device=dev, generator=g)
var = torch.rand(k, d, device=dev, generator=g) + 0.5
logw = torch.full((k,), -torch.log(torch.tensor(float(k))), device=dev)


def step():
    prec = 1.0 / var
    # log N(x | mu, var) via [x, x^2] products: N x K materialised
    logits = (x * x) @ (-0.5 * prec).T + x @ (mu * prec).T
    logits += logw - 0.5 * (d * 1.8378770664093453 + torch.log(var).sum(1) + (mu * mu * prec).sum(1))
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    r = torch.exp(logits - lse)  # N x K responsibilities
    nk = r.sum(0)
    sx = r.T @ x
    sxx = r.T @ (x * x)
    return nk, sx, sxx, lse.sum()


def bench(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


torch.backends.cuda.matmul.allow_tf32 = False
base = torch.cuda.memory_allocated()
torch.cuda.reset_peak_memory_stats()
t32 = bench(step)
extra = (torch.cuda.max_memory_allocated() - base) / 2**30
torch.backends.cuda.matmul.allow_tf32 = True
ttf = bench(step)
xb = torch.cat([x, x * x], 1).bfloat16()
wb = torch.randn(2 * d, k, device=dev).bfloat16()
rb = torch.rand(n, k, device=dev).bfloat16()
tmm = bench(lambda: (xb @ wb, rb.T @ xb))
flops = 8 * n * k * d
print(f"torch N={n} K={k} D={d}: materialising step fp32 {t32:.2f} ms, tf32 {ttf:.2f} ms, "
      f"extra GPU memory {extra:.2f} GiB; the step's two bf16 products {tmm:.2f} ms "
      f"({flops / tmm / 1e9:.0f} TFLOP/s)")
