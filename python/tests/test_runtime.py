"""What the binding promises at run time: arrays read in place, the GIL
released, Ctrl-C between steps, progress through logging."""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import flashgmm
from conftest import blobs

PEAK_RSS = textwrap.dedent("""
    import resource, sys, warnings
    import numpy as np
    import flashgmm
    n, d, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = np.random.RandomState(0)
    x = np.empty((n, d), dtype=dtype)
    for i in range(0, n, 10000):  # no temporary of the whole array
        x[i:i + 10000] = rng.standard_normal((min(10000, n - i), d))
    gm = flashgmm.GaussianMixture(4, max_iter=2, tol=0, device="cpu", threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x[:1000])      # engine, BLAS and allocator warmed up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gm.fit(x)
        gm.score_samples(x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
""")


def peak_growth(n, d, dtype):
    r = subprocess.run([sys.executable, "-c", PEAK_RSS, str(n), str(d), dtype],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1])


def test_contiguous_float32_is_not_copied():
    """Fitting and scoring 600k x 128 float32 rows (307 MB) raise the peak
    RSS by far less than one copy of them; float64 rows, converted once,
    raise it by about one float32 copy: the measurement can tell."""
    n, d = 600_000, 128
    copy = n * d * 4
    f32 = peak_growth(n, d, "float32")
    f64 = peak_growth(n, d, "float64")
    print(f"peak RSS growth: float32 {f32 / 1e6:.1f} MB, float64 {f64 / 1e6:.1f} MB, "
          f"one float32 copy {copy / 1e6:.1f} MB")
    assert f32 < 0.15 * copy
    assert f64 > 0.8 * copy


def test_fit_releases_the_gil():
    x = blobs(400_000, 32, 16, seed=2)
    gm = flashgmm.GaussianMixture(64, max_iter=3, tol=0, device="cpu", random_state=0)
    done = threading.Event()

    def work():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(x)
        done.set()
    t = threading.Thread(target=work)
    ticks = 0
    t.start()
    t0 = time.perf_counter()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - t0
    # With the GIL held through the fit, this thread would not run at all
    # until it ended (no bytecode runs in the fitting thread meanwhile).
    assert elapsed > 0.2
    assert ticks > 0.3 * elapsed / 0.0011, (ticks, elapsed)


INTERRUPTED = textwrap.dedent("""
    import logging, sys, time
    import numpy as np
    import flashgmm
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    x = np.random.RandomState(0).standard_normal((200000, 64)).astype(np.float32)
    gm = flashgmm.GaussianMixture(256, max_iter=10000, tol=0, device="cpu", verbose=1)
    t0 = time.time()
    try:
        gm.fit(x)
        print("finished")
    except KeyboardInterrupt:
        print("interrupted", hasattr(gm, "means_"))
    # The estimator is usable afterwards.
    gm.set_params(max_iter=1)
    import warnings
    warnings.simplefilter("ignore")
    gm.fit(x[:1000])
    print("refit", gm.n_iter_)
""")


def test_ctrl_c_stops_a_fit_between_steps():
    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "iteration 1:" in line:
            break
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    stopped_in = time.perf_counter() - t0
    assert p.returncode == 0, err
    assert out.split("\n")[:2] == ["interrupted False", "refit 1"], out
    assert "iteration 9999" not in err
    print(f"stopped {stopped_in:.2f} s after SIGINT")


def test_verbose_logs_each_step(small, caplog):
    with caplog.at_level(logging.INFO, logger="flashgmm"):
        gm = flashgmm.GaussianMixture(3, verbose=1, device="cpu", random_state=0).fit(small)
    steps = [r.getMessage() for r in caplog.records if "iteration" in r.getMessage()]
    assert len(steps) == gm.n_iter_
    assert steps[0].startswith("iteration 1: mean log-likelihood")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flashgmm"):
        flashgmm.GaussianMixture(3, device="cpu", random_state=0).fit(small)
    assert not caplog.records


def test_threads_share_one_estimator(small):
    gm = flashgmm.GaussianMixture(5, device="cpu", random_state=0).fit(small)
    want = gm.predict(small)
    results = []

    def work():
        for _ in range(5):
            results.append(np.array_equal(gm.predict(small), want))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20
