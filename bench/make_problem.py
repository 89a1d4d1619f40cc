"""Writes a benchmark problem: data.npy (float32, N x D drawn from a random
K-component mixture) and init/ (a flashgmm model directory holding the
initial model both contenders start from: the true centers moved by
N(0, 0.3^2) noise, unit variances, equal weights; close enough that no
component collapses in either program).

For COV full or tied the initial covariances are identity matrices
(covariances.npy, float64).

usage: make_problem.py OUTDIR N K D [SEED [COV]]
"""
import json
import os
import sys

import numpy as np

out, n, k, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
cov = sys.argv[6] if len(sys.argv) > 6 else "diag"
rng = np.random.default_rng(seed)
os.makedirs(out, exist_ok=True)
true_k = k
centers = rng.normal(0, 3, (true_k, d))
labels = rng.integers(0, true_k, n)
x = (centers[labels] + rng.normal(0, 1, (n, d))).astype(np.float32)
np.save(os.path.join(out, "data.npy"), x)
init = os.path.join(out, "init")
os.makedirs(init, exist_ok=True)
np.save(os.path.join(init, "weights.npy"), np.full(k, 1.0 / k))
np.save(os.path.join(init, "means.npy"), (centers + rng.normal(0, 0.3, centers.shape)).astype(np.float32))
if cov == "full":
    np.save(os.path.join(init, "covariances.npy"), np.tile(np.eye(d), (k, 1, 1)))
elif cov == "tied":
    np.save(os.path.join(init, "covariances.npy"), np.eye(d))
else:
    np.save(os.path.join(init, "variances.npy"), np.ones((k, d), dtype=np.float32))
meta = {"format": "flashgmm-model", "version": 1, "k": k, "d": d, "covariance": cov,
        "reg_covar": 1e-6, "iterations": 0, "converged": False, "log_likelihood": [],
        "final_log_likelihood": None, "seed": seed, "rows": n, "reseeded": 0,
        "seconds": 0, "source": "bench/make_problem.py", "init": "perturbed truth", "device": ""}
with open(os.path.join(init, "model.json"), "w") as f:
    json.dump(meta, f, indent=2)
