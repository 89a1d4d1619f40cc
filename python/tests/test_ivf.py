"""IVF helpers: the lists the CLI writes, and FAISS indexes over them."""
import csv

import numpy as np
import pytest

import flashgmm
from conftest import blobs, write_fbin


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ivf")
    x = blobs(6000, 24, 12, seed=8, spread=1.5)
    np.save(d / "x.npy", x)
    flashgmm.GaussianMixture(16, random_state=0, device="cpu").fit(x).save(d / "model")
    # The model the CLI reads (means rounded to float32 on disk).
    return d, x, flashgmm.GaussianMixture.load(d / "model", device="cpu")


@pytest.mark.parametrize("rule", [
    dict(max_lists=1),
    dict(max_lists=3, temperature=20.0, min_resp=0.05),
    dict(max_lists=2, temperature=10.0, ratio=0.5, budget=0.1),
])
def test_assign_csr_is_the_cli_export(setup, cli, tmp_path, rule):
    d, x, gm = setup
    got = flashgmm.assign(gm, str(d / "x.npy"), **rule)
    flags = []
    for key, value in rule.items():
        flags += ["--" + key.replace("_", "-"), value]
    cli("assign", "--device", "cpu", "--model", d / "model", "--data", d / "x.npy",
        "--out", tmp_path / "lists", *flags)
    cli("export", "--assignments", tmp_path / "lists", "--model", d / "model",
        "--out", tmp_path / "npy")
    for name, arr in (("offsets", got.offsets), ("lists", got.lists), ("weights", got.weights),
                      ("loglik", got.loglik)):
        want = np.load(tmp_path / "npy" / f"{name}.npy")
        assert np.array_equal(arr.astype(want.dtype), want), name
    assert np.array_equal(np.load(tmp_path / "npy" / "primary.npy"),
                          got.lists[got.offsets[:-1]])
    n_extra = len(got.lists) - len(x)
    if "budget" in rule:
        assert 0 < n_extra <= int(rule["budget"] * len(x))
    elif rule["max_lists"] == 1:
        assert n_extra == 0
    else:
        assert n_extra > 0
    # The primary list is the prediction; from the array, the same lists
    # (its tiles differ from the file's, so log-likelihoods may differ in
    # the last bit).
    assert np.array_equal(got.lists[got.offsets[:-1]], gm.predict(x))
    mem = flashgmm.assign(gm, x, **rule)
    assert np.array_equal(mem.offsets, got.offsets) and np.array_equal(mem.lists, got.lists)
    np.testing.assert_allclose(mem.loglik, got.loglik, rtol=1e-6)


def test_assign_writes_the_cli_directory(setup, cli, tmp_path):
    d, x, gm = setup
    s = flashgmm.assign(gm, str(d / "x.npy"), max_lists=2, temperature=10.0,
                        out=tmp_path / "py")
    assert s["rows"] == len(x) and s["entries"] > len(x)
    cli("assign", "--device", "cpu", "--model", d / "model", "--data", d / "x.npy",
        "--out", tmp_path / "cli", "--max-lists", 2, "--temperature", 10)
    py = sorted(p.name for p in (tmp_path / "py").iterdir())
    assert py == sorted(p.name for p in (tmp_path / "cli").iterdir())
    for name in py:
        if name.endswith(".fga"):
            assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    cli("info", "--verify", tmp_path / "py")
    with pytest.raises(ValueError, match="max lists"):
        flashgmm.assign(gm, x, max_lists=0)
    with pytest.raises(ValueError, match="temperature"):
        flashgmm.assign(gm, x, temperature=-1)
    with pytest.raises(ValueError, match="budget"):
        flashgmm.assign(gm, x, budget=-0.5)


def test_faiss_index_has_the_evaluators_recall(tmp_path, cli):
    """The evaluator fits its `gmm` method (k-means start, then EM) with the
    same seed as the estimator below: an IndexIVFFlat from build_faiss_ivf
    over that model's hard lists finds the evaluator's recall@10."""
    faiss = pytest.importorskip("faiss")
    base = blobs(6000, 32, 24, seed=11, spread=1.0)
    query = blobs(300, 32, 24, seed=12, spread=1.0)
    write_fbin(tmp_path / "base.fbin", base)
    write_fbin(tmp_path / "query.fbin", query)
    cli("ivf-eval", "--quiet", "--device", "cpu", "--base", tmp_path / "base.fbin",
        "--query", tmp_path / "query.fbin", "--nlist", 32, "--methods", "gmm",
        "--nprobe", "1,2,4", "--seed", 5, "--out", tmp_path / "eval")
    want = {int(r["nprobe"]): float(r["recall_at_10"])
            for r in csv.DictReader(open(tmp_path / "eval" / "results.csv"))
            if r["method"] == "gmm"}
    gm = flashgmm.GaussianMixture(32, init_params="kmeans", random_state=5,
                                  device="cpu").fit(str(tmp_path / "base.fbin"))
    index = flashgmm.build_faiss_ivf(gm, base)
    assert isinstance(index, faiss.IndexIVFFlat) and index.ntotal == len(base)
    gt = np.argsort(((query[:, None, :] - base[None]) ** 2).sum(-1), axis=1)[:, :10]
    for nprobe in (1, 2, 4):
        index.nprobe = nprobe
        _, found = index.search(query, 10)
        recall = np.mean([len(set(found[i]) & set(gt[i])) / 10 for i in range(len(query))])
        print(f"nprobe {nprobe}: faiss {recall:.4f}, evaluator {want[nprobe]:.4f}")
        assert abs(recall - want[nprobe]) <= 2e-3, nprobe
    assert want[1] < want[4]
    # Multi-list: each row stored once per list.
    a = flashgmm.assign(gm, base, max_lists=2, temperature=30.0)
    multi = flashgmm.build_faiss_ivf(gm, base, a)
    assert multi.ntotal == len(a.lists) > len(base)
    q = flashgmm.to_faiss_quantizer(gm)
    assert q.ntotal == 32 and q.d == 32
