"""The CUDA engine through the package (skips without a GPU; fails under
FGMM_REQUIRE_GPU=1)."""
import numpy as np

import flashgmm
from conftest import blobs


def test_gpu_fit_matches_the_cpu(gpu):
    x = blobs(50000, 64, 16, seed=4)
    w = flashgmm.GaussianMixture(16, random_state=0, max_iter=1, device="cpu").fit(x)
    start = dict(weights_init=w.weights_, means_init=w.means_, precisions_init=w.precisions_,
                 max_iter=10, tol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = flashgmm.GaussianMixture(16, device="cpu", **start).fit(x)
        cuda = flashgmm.GaussianMixture(16, device=gpu, **start).fit(x)
        cuda64 = flashgmm.GaussianMixture(16, device=gpu, precision="fp64", **start).fit(x)
    assert abs(cuda.lower_bound_ - cpu.lower_bound_) < 1e-4 * abs(cpu.lower_bound_)
    assert abs(cuda64.lower_bound_ - cpu.lower_bound_) < 1e-9 * abs(cpu.lower_bound_)
    assert (cuda.predict(x) == cpu.predict(x)).mean() > 0.999
    np.testing.assert_allclose(cuda.score_samples(x), cpu.score_samples(x), rtol=1e-4)
    a, b = flashgmm.assign(cuda, x, max_lists=2), flashgmm.assign(cpu, x, max_lists=2)
    assert (a.lists[a.offsets[:-1]] == b.lists[b.offsets[:-1]]).mean() > 0.999
