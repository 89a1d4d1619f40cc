"""scikit-learn's estimator checks that apply to a density estimator."""
import warnings

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import flashgmm

# Checks that do not apply, with the reason: none. parametrize_with_checks
# yields only the checks that apply to a density estimator without
# sample_weight, partial_fit or transform (scikit-learn 1.2: 28 checks), and
# every one runs.
SKIPPED = {}


@parametrize_with_checks([flashgmm.GaussianMixture(device="cpu")])
def test_sklearn_check(estimator, check):
    name = getattr(check, "func", check).__name__
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
