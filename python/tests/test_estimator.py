"""GaussianMixture against scikit-learn and against the CLI."""
import json
import os
import pickle
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import flashgmm
from conftest import blobs


def _init(x, k, cov, seed=3):
    """A starting model both sides take: k rows as means, the data's
    variance, equal weights."""
    rng = np.random.RandomState(seed)
    means = x[rng.choice(len(x), k, replace=False)].astype(np.float64)
    if cov in ("full", "tied"):
        prec = np.linalg.inv(np.cov(x.astype(np.float64), rowvar=False))
        return np.full(k, 1.0 / k), means, prec if cov == "tied" else np.tile(prec, (k, 1, 1))
    var = np.tile(x.astype(np.float64).var(axis=0), (k, 1))
    if cov == "spherical":
        var = var.mean(axis=1)
    return np.full(k, 1.0 / k), means, 1.0 / var


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("cov", ["diag", "spherical", "full", "tied"])
def test_same_start_same_fit_as_sklearn(small, cov):
    """Same data, same initial model, 10 steps: parameters and lower bound
    within 1e-6 relative of scikit-learn's float64 fit (the CPU engine's
    fp64 mode; the default mode is within ~1e-5)."""
    w, mu, prec = _init(small, 5, cov)
    common = dict(weights_init=w, means_init=mu, precisions_init=prec, max_iter=10, tol=0.0,
                  reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(5, covariance_type=cov, **common).fit(small.astype(np.float64))
        ours = flashgmm.GaussianMixture(5, covariance_type=cov, device="cpu", precision="fp64",
                                        **common).fit(small)
        default = flashgmm.GaussianMixture(5, covariance_type=cov, device="cpu",
                                           **common).fit(small)
    assert ours.n_iter_ == sk.n_iter_ == 10
    assert ours.converged_ == sk.converged_
    assert _rel(ours.lower_bound_, sk.lower_bound_) < 1e-6
    assert _rel(ours.weights_, sk.weights_) < 1e-6
    assert np.max(np.abs(ours.means_ - sk.means_)) < 1e-6 * np.max(np.abs(sk.means_))
    assert _rel(ours.covariances_, sk.covariances_) < 1e-6
    assert _rel(ours.precisions_, sk.precisions_) < 1e-6
    # Normwise: the factors' zeros above the diagonal have no relative error.
    assert (np.max(np.abs(ours.precisions_cholesky_ - sk.precisions_cholesky_))
            < 1e-6 * np.max(np.abs(sk.precisions_cholesky_)))
    assert ours.covariances_.shape == sk.covariances_.shape
    assert _rel(default.covariances_, sk.covariances_) < 1e-4
    # The same data scored both ways.
    assert _rel(ours.score_samples(small), sk.score_samples(small)) < 1e-5
    assert (ours.predict(small) == sk.predict(small)).mean() > 0.999


def test_python_fit_is_the_cli_fit_bit_for_bit(tmp_path, small, cli):
    """The estimator's saved model and the CLI's, from the same file, seed
    and flags, have the same bytes in every array."""
    data = tmp_path / "x.npy"
    np.save(data, small)
    cli("fit", "--quiet", "--device", "cpu", "--data", data, "--k", 5, "--seed", 7,
        "--max-iter", 30, "--out", tmp_path / "cli")
    gm = flashgmm.GaussianMixture(5, random_state=7, max_iter=30, device="cpu").fit(str(data))
    gm.save(tmp_path / "py")
    for f in ("weights.npy", "means.npy", "variances.npy"):
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    a = json.loads((tmp_path / "py" / "model.json").read_text())
    b = json.loads((tmp_path / "cli" / "model.json").read_text())
    for key in ("k", "dim", "covariance", "iterations", "converged", "loglik", "seed"):
        if key in b:
            assert a.get(key) == b[key], key
    # From the array instead of the file: the same fit.
    arr = flashgmm.GaussianMixture(5, random_state=7, max_iter=30, device="cpu").fit(small)
    assert arr.n_iter_ == gm.n_iter_
    assert _rel(arr.means_, gm.means_) < 1e-9


def test_init_params_and_random_state(small):
    fits = {}
    for init in ("kmeans++", "random", "kmeans"):
        a = flashgmm.GaussianMixture(5, init_params=init, random_state=4, device="cpu").fit(small)
        b = flashgmm.GaussianMixture(5, init_params=init, random_state=4, device="cpu").fit(small)
        assert np.array_equal(a.means_, b.means_), init
        assert a.converged_ and a.n_iter_ >= 2
        fits[init] = a
    assert not np.array_equal(fits["random"].means_, fits["kmeans++"].means_)
    c = flashgmm.GaussianMixture(5, random_state=5, device="cpu").fit(small)
    assert not np.array_equal(c.means_, fits["kmeans++"].means_)
    # A partial start: means given, weights and variances from kmeans++.
    w, mu, prec = _init(small, 5, "diag")
    d = flashgmm.GaussianMixture(5, means_init=mu, max_iter=1, tol=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d.fit(small)
    assert d.n_iter_ == 1


def test_methods_agree_with_sklearn_on_one_model(small):
    """predict, predict_proba, score_samples, score, bic and aic of one model
    in both libraries (from_sklearn), K below and above one pass's 32."""
    for k in (5, 40):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = SkGaussianMixture(k, covariance_type="diag", random_state=0,
                                   max_iter=20).fit(small.astype(np.float64))
        gm = flashgmm.GaussianMixture.from_sklearn(sk, device="cpu")
        x = small[:500]
        assert (gm.predict(x) == sk.predict(x)).mean() > 0.998
        p_ours, p_sk = gm.predict_proba(x), sk.predict_proba(x)
        assert p_ours.shape == (500, k)
        assert np.max(np.abs(p_ours - p_sk)) < 1e-4, k
        np.testing.assert_allclose(p_ours.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(gm.score_samples(x), sk.score_samples(x), rtol=1e-5)
        assert _rel(gm.score(x), sk.score(x)) < 1e-6
        assert _rel(gm.bic(x), sk.bic(x)) < 1e-6
        assert _rel(gm.aic(x), sk.aic(x)) < 1e-6
        back = gm.to_sklearn()
        np.testing.assert_array_equal(back.means_, gm.means_)
        assert (back.predict(x) == sk.predict(x)).all()


def test_spherical_from_and_to_sklearn(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(4, covariance_type="spherical", random_state=0).fit(small)
    gm = flashgmm.GaussianMixture.from_sklearn(sk, device="cpu")
    assert gm.covariances_.shape == (4,)
    np.testing.assert_allclose(gm.score_samples(small), sk.score_samples(small), rtol=1e-5)
    bad = SkGaussianMixture(2).fit(small[:50])
    bad.covariance_type = "banded"
    with pytest.raises(ValueError, match="banded"):
        flashgmm.GaussianMixture.from_sklearn(bad)


@pytest.mark.parametrize("cov", ["full", "tied"])
def test_matrix_covariances_from_to_sklearn_save_load(small, tmp_path, cov):
    """A scikit-learn full or tied model scores, predicts, saves and loads
    the same through flashgmm; sample draws from the matrices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(4, covariance_type=cov, random_state=0).fit(small)
    gm = flashgmm.GaussianMixture.from_sklearn(sk, device="cpu")
    assert gm.covariances_.shape == sk.covariances_.shape
    np.testing.assert_allclose(gm.score_samples(small), sk.score_samples(small), rtol=1e-5)
    assert (gm.predict(small) == sk.predict(small)).mean() > 0.999
    np.testing.assert_allclose(gm.predict_proba(small), sk.predict_proba(small), atol=1e-5)
    gm.save(tmp_path / "m")
    assert (tmp_path / "m" / "covariances.npy").exists()
    back = flashgmm.GaussianMixture.load(tmp_path / "m", device="cpu")
    assert np.array_equal(back.covariances_, gm.covariances_)
    assert back.covariance_type == cov
    # means.npy holds float32 means: the loaded model scores to ~1e-7.
    np.testing.assert_allclose(back.to_sklearn().score_samples(small), sk.score_samples(small),
                               rtol=1e-6)
    x, y = back.sample(4000)
    assert x.shape == (4000, small.shape[1])
    assert abs(back.bic(small) - sk.bic(small)) < 1e-5 * abs(sk.bic(small))


def test_sample(small):
    gm = flashgmm.GaussianMixture(5, random_state=2, device="cpu").fit(small)
    x, y = gm.sample(20000)
    assert x.shape == (20000, 7) and y.shape == (20000,)
    counts = np.bincount(y, minlength=5) / 20000
    np.testing.assert_allclose(counts, gm.weights_, atol=0.02)
    for j in range(5):
        np.testing.assert_allclose(x[y == j].mean(axis=0), gm.means_[j],
                                   atol=0.1 * np.sqrt(gm.covariances_[j].max()) + 0.05)
    x2, _ = gm.sample(20000)
    assert np.array_equal(x, x2)  # random_state fixes the draw


def test_save_load_pickle_round_trip(tmp_path, small, cli):
    gm = flashgmm.GaussianMixture(5, random_state=1, device="cpu").fit(small)
    gm.save(tmp_path / "m")
    back = flashgmm.GaussianMixture.load(tmp_path / "m", device="cpu")
    assert back.n_components == 5 and back.n_iter_ == gm.n_iter_
    assert back.converged_ == gm.converged_ and back.lower_bound_ == gm.lower_bound_
    assert (back.predict(small) == gm.predict(small)).all()
    np.testing.assert_allclose(back.means_, gm.means_, rtol=1e-6)  # means are float32 on disk
    r = cli("info", tmp_path / "m")
    assert "K=5" in r.stdout or "5" in r.stdout
    # A saved-then-loaded model saves the same bytes again.
    back.save(tmp_path / "m2")
    for f in ("weights.npy", "means.npy", "variances.npy"):
        assert (tmp_path / "m" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes()
    with pytest.raises(FileExistsError):
        gm.save(tmp_path / "m")
    again = pickle.loads(pickle.dumps(gm))
    assert np.array_equal(again.predict(small), gm.predict(small))
    assert again.score(small) == gm.score(small)


def test_dtypes_are_read_in_place_or_converted_once(small):
    q = np.clip(np.round(small * 10 + 100), 0, 255)
    base = flashgmm.GaussianMixture(3, random_state=0, max_iter=5, tol=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = base.fit(q.astype(np.float32)).means_.copy()
        for t in (np.uint8, np.float16, np.float64, np.int64, np.int32):
            got = base.fit(q.astype(t)).means_
            assert np.array_equal(got, ref), t
        got = base.fit(np.asfortranarray(q.astype(np.float32))).means_
        assert np.array_equal(got, ref)
        i8 = (q - 128).astype(np.int8)
        ref8 = base.fit(i8.astype(np.float32)).means_.copy()
        assert np.array_equal(base.fit(i8).means_, ref8)
        assert np.array_equal(base.fit(i8.tolist()).means_, ref8)  # lists convert too


def test_out_of_core_fit_from_shards(tmp_path, cli):
    x = blobs(20000, 16, 8, seed=5)
    np.save(tmp_path / "x.npy", x)
    cli("shard", "--input", tmp_path / "x.npy", "--out", tmp_path / "shards",
        "--rows-per-chunk", 1000)
    # fp64: float64 statistics, so that the different chunking of the two
    # sources changes nothing above rounding.
    a = flashgmm.GaussianMixture(8, random_state=3, device="cpu",
                                 precision="fp64").fit(str(tmp_path / "shards"))
    b = flashgmm.GaussianMixture(8, random_state=3, device="cpu", precision="fp64").fit(x)
    assert a.n_iter_ == b.n_iter_
    assert _rel(a.lower_bound_, b.lower_bound_) < 1e-12
    assert _rel(a.means_, b.means_) < 1e-10
    # Scoring and prediction stream the shards too.
    assert (a.predict(str(tmp_path / "shards")) == a.predict(x)).all()
    assert _rel(a.score(tmp_path / "shards"), a.score(x)) < 1e-9
