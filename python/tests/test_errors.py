"""Bad input: each becomes the exception a Python user expects, carrying
the C library's message."""
import numpy as np
import pytest

import flashgmm
from conftest import write_fbin


def fitted(x):
    return flashgmm.GaussianMixture(3, random_state=0, device="cpu").fit(x)


def test_nan_row_is_named_by_index(small):
    x = small.copy()
    x[17, 4] = np.nan
    with pytest.raises(flashgmm.DataError, match=r"row 17 column 4 is (NaN|not finite)") as e:
        flashgmm.GaussianMixture(3, device="cpu").fit(x)
    assert isinstance(e.value, ValueError) and isinstance(e.value, flashgmm.Error)
    gm = fitted(small)
    x[17, 4] = np.inf
    with pytest.raises(ValueError, match="row 17"):
        gm.score_samples(x)


def test_shapes_and_types(small):
    gm = fitted(small)
    with pytest.raises(ValueError, match="2D"):
        gm.predict(small[0])
    with pytest.raises(ValueError, match="features"):
        gm.predict(small[:, :5])
    with pytest.raises(ValueError, match="0 sample"):
        flashgmm.GaussianMixture(1).fit(np.empty((0, 3), np.float32))
    with pytest.raises(ValueError, match="Complex"):
        gm.predict(small.astype(np.complex64))
    with pytest.raises(TypeError):
        gm.predict(np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        flashgmm.GaussianMixture(10).fit(small[:5])


@pytest.mark.parametrize("params,match", [
    (dict(n_components=0), "n_components"),
    (dict(covariance_type="banded"), "covariance_type"),
    (dict(tol=-1.0), "tol"),
    (dict(reg_covar=float("nan")), "reg_covar"),
    (dict(max_iter=0), "max_iter"),
    (dict(init_params="k-means"), "init_params"),
    (dict(device="tpu"), "tpu"),
    (dict(precision="fp16"), "fp16"),
    (dict(random_state="seed"), "random_state"),
    (dict(means_init=np.zeros((2, 2))), "means_init"),
    (dict(precisions_init=-np.ones((3, 7))), "precisions_init"),
    (dict(covariance_type="full", precisions_init=np.tile(-np.eye(7), (3, 1, 1))),
     "precisions_init must be symmetric positive definite"),
    (dict(covariance_type="tied", precisions_init=np.ones((3, 7))), "precisions_init"),
    (dict(weights_init=np.array([0.5, 0.5, 0.5])), "weights_init"),
])
def test_bad_parameters(small, params, match):
    args = dict(n_components=3, device="cpu")
    args.update(params)
    with pytest.raises(ValueError, match=match):
        flashgmm.GaussianMixture(**args).fit(small)


def test_precision_fast_is_the_gpus(small):
    with pytest.raises(flashgmm.UnsupportedError, match="fast"):
        flashgmm.GaussianMixture(3, device="cpu", precision="fast").fit(small)


def test_not_fitted(small):
    gm = flashgmm.GaussianMixture(3)
    for method in (gm.predict, gm.predict_proba, gm.score_samples, gm.score):
        with pytest.raises(ValueError, match="not fitted"):
            method(small)
    with pytest.raises(AttributeError):
        gm.save("never")


def test_files(tmp_path, small):
    with pytest.raises(OSError) as e:
        flashgmm.GaussianMixture(3).fit(str(tmp_path / "missing.fbin"))
    assert "missing.fbin" in str(e.value) and isinstance(e.value, flashgmm.Error)
    bad = tmp_path / "short.fbin"
    write_fbin(bad, small)
    bad.write_bytes(bad.read_bytes()[:1000])  # header promises more rows
    with pytest.raises(flashgmm.Error, match="short.fbin"):
        flashgmm.GaussianMixture(3, device="cpu").fit(str(bad))
    with pytest.raises(OSError):
        flashgmm.GaussianMixture.load(tmp_path / "no-model")
    gm = fitted(small)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        gm.save(tmp_path / "taken")
    with pytest.raises(FileExistsError):
        flashgmm.assign(gm, small, out=tmp_path / "taken")
    assert list((tmp_path / "taken").iterdir()) == []  # nothing written into it


def test_model_directory_with_other_dimension(tmp_path, small, cli):
    gm = fitted(small)
    data = tmp_path / "wide.fbin"
    write_fbin(data, np.zeros((10, 9), np.float32))
    with pytest.raises(ValueError):
        gm.score(str(data))
