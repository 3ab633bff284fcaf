"""lib.verdicts: the verdict rule on constructed cases, and the paired comparison against scipy."""
import numpy as np
import pytest
from scipy import stats

from lib import verdicts as V


@pytest.mark.parametrize("effect, se, post, expected", [
    (1.0, 0.1, 1.0, "reproduced"),        # significant, same size
    (0.5, 0.1, 1.0, "reproduced"),        # significant, same order of magnitude
    (0.2, 0.05, 1.0, "partly"),           # significant but under a third of the post's
    (0.05, 0.01, 1.0, "not reproduced"),  # significant but an order of magnitude below the post's
    (-0.5, 0.1, 1.0, "not reproduced"),   # the opposite, significantly
    (0.05, 0.1, 1.0, "not reproduced"),   # power to see 1.0 (2.8 * 0.1 < 1) and saw nothing
    (0.05, 0.5, 1.0, "inconclusive"),     # smallest detectable 1.4 > 1.0
])
def test_decide_follows_the_rule(effect, se, post, expected):
    assert V.decide(effect, se, post) == expected
    assert V.decide(effect, se, post, mechanism=True) == "mechanism only"


def test_decide_rejects_bad_numbers():
    with pytest.raises(ValueError, match="post_effect"):
        V.decide(1.0, 0.1, -1.0)
    with pytest.raises(ValueError, match="standard_error"):
        V.decide(1.0, -0.1, 1.0)
    with pytest.raises(ValueError, match="effect"):
        V.decide(float("nan"), 0.1, 1.0)
    with pytest.raises(ValueError, match="verdict"):
        V.check_verdict("not")


def test_compare_paired_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.3, 7)
    b = a - rng.normal(0.2, 0.1, 7)
    c = V.compare_paired(a, b)
    assert c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c.diff == pytest.approx(np.mean(a - b)) and c.diff_se == pytest.approx(stats.sem(a - b))
    assert c.std_a == pytest.approx(np.std(a, ddof=1))
    assert c.decide(0.2) == "reproduced" and c.decide(0.2, sign=-1) == "not reproduced"
    assert "paired t, n=7" in c.summary()


def test_compare_paired_needs_three_finite_pairs():
    with pytest.raises(ValueError, match="at least 3"):
        V.compare_paired([1, 2], [1, 2])
    with pytest.raises(ValueError, match="paired"):
        V.compare_paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        V.compare_paired([1, 2, float("nan")], [1, 2, 3])
    assert V.compare_paired([1, 2, 3], [1, 2, 3]).p_value == 1.0


def test_decide_check():
    assert V.decide_check(True) == "reproduced" and V.decide_check(False) == "not reproduced"
    assert V.decide_check(True, partial=True) == "partly"
    assert V.decide_check(True, mechanism=True) == "mechanism only"
    assert V.decide_check(False, mechanism=True) == "not reproduced"  # a failed mechanism check is not a pass
    with pytest.raises(TypeError, match="passed"):
        V.decide_check(1)
