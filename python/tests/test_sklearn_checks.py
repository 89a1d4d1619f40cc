"""scikit-learn's estimator checks that apply to a density estimator."""
import functools
import warnings

import pytest
from sklearn.utils.estimator_checks import check_estimator

import flashgmm

# Checks that do not apply, with the reason: none. check_estimator yields
# only the checks that apply to a density estimator without sample_weight,
# partial_fit or transform (scikit-learn 1.2: 29 checks), and every one runs.
SKIPPED = {}


def _name(check):
    return check.func.__name__ if isinstance(check, functools.partial) else check.__name__


CHECKS = list(check_estimator(flashgmm.GaussianMixture(device="cpu"), generate_only=True))


@pytest.mark.parametrize("estimator,check", CHECKS, ids=[_name(c) for _, c in CHECKS])
def test_sklearn_check(estimator, check):
    name = _name(check)
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
