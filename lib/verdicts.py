"""The book's one verdict rule, and the paired comparison it is applied to.

Every row of every "post vs. this book" table gets one of five verdicts:

* **reproduced** — the post's effect is there, in its direction and of its order of magnitude, outside the
  seed noise (or, for an exact claim, the check passes on real data);
* **partly** — the direction is right and the effect is outside the noise, but clearly smaller (between a
  tenth and a third of the post's) or shown on a narrower scope;
* **not reproduced** — the test had the power to see the post's effect and did not (nothing outside the
  noise, or an effect more than ten times smaller than the post's), or saw the opposite;
* **inconclusive** — the test could not have seen the post's effect: its smallest detectable effect
  (``2.8 x`` the standard error of the measured effect: 5 % two-sided, 80 % power) is larger than the
  post's effect;
* **mechanism only** — checked on synthetic or oracle inputs, with no real-data test of the claim.

:func:`decide` applies the rule to a measured effect and its standard error; :func:`compare_paired` turns
per-seed results of two arms (paired by seed) into that effect, with mean ± std and a paired t-test.
A verdict is never drawn from one seed: :func:`compare_paired` needs at least three.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive", "mechanism only")
DETECTABLE_SE = 2.8   # smallest detectable effect, in standard errors (two-sided 5 %, power 80 %)
SIGNIFICANT_SE = 2.0  # an effect outside the noise: |effect| > 2 standard errors
SMALLER = 1 / 3       # "clearly smaller": below a third of the post's effect
NEGLIGIBLE = 1 / 10   # more than an order of magnitude below the post's effect: the claimed effect is absent


def check_verdict(verdict: str) -> str:
    """Return ``verdict`` if it is one of :data:`VERDICTS`, else raise naming the vocabulary."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return verdict


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def decide(effect: float, standard_error: float, post_effect: float, *, mechanism: bool = False) -> str:
    """The verdict for a measured ``effect`` (signed so that the post's direction is positive) with
    ``standard_error``, against the post's effect size ``post_effect`` (> 0, same units).

    * ``effect > 2 se``: reproduced if ``effect >= post_effect / 3``, partly if ``effect >= post_effect / 10``,
      else not reproduced (an order of magnitude below the claim);
    * ``effect < -2 se``: not reproduced (the opposite was seen);
    * otherwise: inconclusive if ``2.8 se > post_effect`` (no power), else not reproduced.

    ``mechanism=True`` (synthetic or oracle inputs) gives "mechanism only" whatever the numbers."""
    effect = _finite("effect", effect)
    se = _finite("standard_error", standard_error)
    post = _finite("post_effect", post_effect)
    if se < 0:
        raise ValueError(f"standard_error must be >= 0, got {se}")
    if post <= 0:
        raise ValueError(f"post_effect must be > 0 (sign the effect so the post's direction is positive), got {post}")
    if mechanism:
        return "mechanism only"
    if effect > SIGNIFICANT_SE * se:
        if effect >= SMALLER * post:
            return "reproduced"
        return "partly" if effect >= NEGLIGIBLE * post else "not reproduced"
    if effect < -SIGNIFICANT_SE * se:
        return "not reproduced"
    return "inconclusive" if DETECTABLE_SE * se > post else "not reproduced"


def decide_check(passed: bool, *, mechanism: bool = False, partial: bool = False) -> str:
    """The verdict for an exact claim (an identity, a count, an equivalence) checked by a cell.

    ``passed`` -> reproduced (``partial``: partly; ``mechanism``, a check on synthetic or oracle inputs only:
    mechanism only); failed -> not reproduced, also for a mechanism check (the check saw the opposite)."""
    if not isinstance(passed, (bool, np.bool_)):
        raise TypeError(f"passed must be a bool, got {type(passed).__name__}")
    if not passed:
        return "not reproduced"
    if mechanism:
        return "mechanism only"
    return "partly" if partial else "reproduced"


def smallest_detectable(standard_error: float) -> float:
    """The smallest effect a test with this standard error detects (two-sided 5 %, 80 % power)."""
    return DETECTABLE_SE * _finite("standard_error", standard_error)


@dataclass(frozen=True)
class Comparison:
    """Two arms measured on the same seeds: ``a`` (e.g. the post's method) minus ``b`` (the baseline)."""

    n: int
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    diff: float          # mean of the per-seed differences a - b
    diff_se: float       # standard error of that mean
    p_value: float       # paired two-sided t-test (scipy.stats.ttest_rel); 1.0 when all differences are 0

    def summary(self, digits: int = 3) -> str:
        """``a mean ± std vs b mean ± std; diff ± se (paired t, n seeds, p)``."""
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.mean_a)} ± {f.format(self.std_a)} vs {f.format(self.mean_b)} ± "
                f"{f.format(self.std_b)}; diff {f.format(self.diff)} ± {f.format(self.diff_se)} "
                f"(paired t, n={self.n}, p={self.p_value:.2g})")

    def decide(self, post_effect: float, *, sign: float = 1.0) -> str:
        """:func:`decide` on ``sign * diff`` (``sign=-1`` when the post predicts ``a < b``)."""
        if sign not in (1, -1, 1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {sign!r}")
        return decide(sign * self.diff, self.diff_se, post_effect)


def compare_paired(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Paired comparison of per-seed results ``a[i]`` and ``b[i]`` (same seed i), at least 3 seeds.

    Means and sample standard deviations of each arm, the mean difference with its standard error, and the
    two-sided paired t-test's p-value (``scipy.stats.ttest_rel``)."""
    from scipy.stats import ttest_rel

    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be 1-D and paired (same length), got shapes {a_arr.shape} and {b_arr.shape}")
    if len(a_arr) < 3:
        raise ValueError(f"a and b need at least 3 paired seeds for a verdict, got {len(a_arr)}")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("a and b must be finite (a NaN means a run diverged: check it before comparing)")
    d = a_arr - b_arr
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    p = 1.0 if np.allclose(d, d[0]) and d[0] == 0 else float(ttest_rel(a_arr, b_arr).pvalue)
    if not math.isfinite(p):  # constant non-zero differences: the t statistic is infinite
        p = 0.0
    return Comparison(len(d), float(a_arr.mean()), float(a_arr.std(ddof=1)), float(b_arr.mean()),
                      float(b_arr.std(ddof=1)), float(d.mean()), se, p)
