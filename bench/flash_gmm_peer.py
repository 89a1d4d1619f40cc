"""Times Flash-GMM's public Triton E-step kernels and a PyTorch EM step that
materialises the N x K responsibilities, on the GPU flashgmm is timed on,
and measures the error of Flash-GMM's statistics against float64. Runs on
the GPU host (PyTorch and Triton are there; neither is a dependency of
flashgmm). Flash-GMM's code is not part of this project: pass the folder
holding its flash_gmm_full_h100.py and flash_gmm_diag_h100.py.

usage: flash_gmm_peer.py FLASH_GMM_DIR full|diag N K D

The data has engine_bench's structure (64 cluster centres ~ 100 + 30 N(0,1),
rows = centre + 10 N(0,1)); the model has K means drawn from the rows and
covariances 100 (I + 0.1 B Bt / D) (full) or 100 (1 + 0.1 u) (diag). The
error is measured on the first 10,000 rows, norm-wise relative, for each
statistic Flash-GMM returns and for the covariance it implies
(S/Nk - mu mu^T) against the same quantity computed in float64.
"""
import math
import statistics
import sys

import torch

LOG_2PI = 1.8378770664093453


def timed(fn, reps=5, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / (b.norm() + 1e-300)).item()


def make(n, k, d, cov, dev):
    g = torch.Generator(device=dev).manual_seed(1)
    ctr = 100 + 30 * torch.randn(64, d, device=dev, generator=g)
    lab = torch.randint(0, 64, (n,), device=dev, generator=g)
    x = (ctr[lab] + 10 * torch.randn(n, d, device=dev, generator=g)).float()
    mu = x[torch.randperm(n, device=dev, generator=g)[:k]].clone()
    if cov == "full":
        b = torch.randn(k, d, d, device=dev, generator=g, dtype=torch.float64)
        sigma = 100 * (torch.eye(d, device=dev, dtype=torch.float64) + 0.1 * b @ b.transpose(1, 2) / d)
        # precision Cholesky factor L (lower), L L^T = sigma^-1, as scikit-learn keeps it
        prec = torch.linalg.inv(sigma)
        prec = 0.5 * (prec + prec.transpose(1, 2))
        par = torch.linalg.cholesky(prec)
    else:
        par = (100 * (1 + 0.1 * torch.rand(k, d, device=dev, generator=g, dtype=torch.float64))).log()
    logw = torch.full((k,), -math.log(k), device=dev, dtype=torch.float64)
    return x, mu, par, logw


def logits64(x, mu, par, logw, cov):
    """N x K float64 log-likelihoods (components in blocks)."""
    x, mu = x.double(), mu.double()
    out = []
    for k0 in range(0, mu.shape[0], 64):
        m = mu[k0:k0 + 64]
        if cov == "full":
            L = par[k0:k0 + 64]
            v = torch.einsum("nd,kde->nke", x, L) - torch.einsum("kd,kde->ke", m, L)[None]
            maha = (v * v).sum(-1)
            half_logdet = torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
        else:
            prec = torch.exp(-par[k0:k0 + 64])
            maha = (x * x) @ prec.T - 2 * x @ (m * prec).T + (m * m * prec).sum(1)
            half_logdet = -0.5 * par[k0:k0 + 64].sum(1)
        out.append(logw[k0:k0 + 64] + half_logdet - 0.5 * x.shape[1] * LOG_2PI - 0.5 * maha)
    return torch.cat(out, 1)


def stats64(x, mu, par, logw, cov):
    lg = logits64(x, mu, par, logw, cov)
    logz = torch.logsumexp(lg, 1)
    r = torch.exp(lg - logz[:, None])
    x = x.double()
    nk = r.sum(0)
    sx = r.T @ x
    if cov == "full":
        s2 = torch.stack([(x * r[:, k:k + 1]).T @ x for k in range(r.shape[1])])
    else:
        s2 = r.T @ (x * x)
    return logz, nk, sx, s2


def torch_step(x, mu, par, logw, cov):
    """The materialising fp32 EM step: N x K logits and responsibilities."""
    k, d = mu.shape
    if cov == "full":
        L = par.float()
        lg = torch.empty(x.shape[0], k, device=x.device)
        for k0 in range(0, k, 16):
            v = torch.einsum("nd,kde->nke", x, L[k0:k0 + 16]) - torch.einsum(
                "kd,kde->ke", mu[k0:k0 + 16], L[k0:k0 + 16])[None]
            lg[:, k0:k0 + 16] = -0.5 * (v * v).sum(-1)
        lg += (logw + torch.log(torch.diagonal(par, dim1=1, dim2=2)).sum(-1)).float()
    else:
        prec = torch.exp(-par).float()
        lg = -0.5 * ((x * x) @ prec.T - 2 * x @ (mu * prec).T + (mu * mu * prec).sum(1))
        lg += (logw - 0.5 * par.sum(1)).float()
    r = torch.softmax(lg, 1)
    nk = r.sum(0)
    sx = r.T @ x
    means = sx / nk[:, None]
    if cov == "full":
        cv = torch.stack([(x * r[:, j:j + 1]).T @ x for j in range(k)]) / nk[:, None, None]
        cv -= means[:, :, None] * means[:, None, :]
    else:
        cv = r.T @ (x * x) / nk[:, None] - means * means
    return nk, means, cv


def main():
    sys.path.insert(0, sys.argv[1])
    cov, n, k, d = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    x, mu, par, logw = make(n, k, d, cov, dev)
    if cov == "full":
        from flash_gmm_full_h100 import flash_gmm_estep_full as estep
        arg = par.float()
    else:
        from flash_gmm_diag_h100 import flash_gmm_estep_diag as estep
        arg = par.float()
    lw = logw.float()
    ms = timed(lambda: estep(x, mu, arg, lw))
    flops = (4.0 * n * k * d * d) if cov == "full" else (8.0 * n * k * d)
    print(f"Flash-GMM {cov} E-step N={n} K={k} D={d}: {ms:.2f} ms "
          f"({flops / ms / 1e9:.1f} TFLOP/s counted as 4NKD^2 for full, 8NKD for diag)")

    sub = min(n, 10000)
    xs = x[:sub].contiguous()
    logz, nk, sx, s2 = estep(xs, mu, arg, lw)
    rz, rnk, rsx, rs2 = stats64(xs, mu, par, logw, cov)
    live = rnk > 1e-3 * sub / k
    cv = s2[live].double() / nk[live].double().view(-1, *([1] * (s2.dim() - 1)))
    rcv = rs2[live] / rnk[live].view(-1, *([1] * (rs2.dim() - 1)))
    mm = (sx[live].double() / nk[live].double()[:, None])
    rmm = rsx[live] / rnk[live][:, None]
    if cov == "full":
        cv -= mm[:, :, None] * mm[:, None, :]
        rcv -= rmm[:, :, None] * rmm[:, None, :]
    else:
        cv -= mm * mm
        rcv -= rmm * rmm
    print(f"Flash-GMM {cov} statistics of {sub} rows against float64: rel err logZ "
          f"{rel(logz, rz):.2e} nk {rel(nk, rnk):.2e} sums {rel(sx, rsx):.2e} second moments "
          f"{rel(s2, rs2):.2e}; implied covariances of the {int(live.sum())} components with "
          f"Nk > {1e-3 * sub / k:.3g}: {rel(cv, rcv):.2e}")

    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        tms = timed(lambda: torch_step(x, mu, par, logw, cov), reps=3, warm=1)
        extra = (torch.cuda.max_memory_allocated() - base) / 2**30
        print(f"PyTorch materialising {cov} EM step fp32 N={n} K={k} D={d}: {tms:.2f} ms, "
              f"peak {extra:.2f} GiB beyond the rows and the model")
    except torch.OutOfMemoryError:
        print(f"PyTorch materialising {cov} EM step fp32 N={n} K={k} D={d}: out of memory")


if __name__ == "__main__":
    main()
