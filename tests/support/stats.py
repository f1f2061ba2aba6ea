"""Statistical checks for the samplers' law tests, exact and without scipy.

The draws in the tests come from fixed seeds, so each check is deterministic: it
passes or fails the same way every run and cannot flake. Against a correct sampler a
fixed seed is "unlucky" with probability ALPHA (and would then fail at once, for
ever, and be looked at); against a wrong law the statistics grow with the number of
draws, so a small ALPHA costs nothing (the power checks in the tests show it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

ALPHA = 1e-3


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom, exactly, without scipy.

    The regularised upper incomplete gamma function Q(df/2, x/2) has a closed form at
    integer and half-integer shape: Q(x; 2) = exp(-x/2), Q(x; 1) = erfc(sqrt(x/2)), and
    Q(x; k + 2) = Q(x; k) + (x/2)**(k/2) * exp(-x/2) / Gamma(k/2 + 1).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    half = x / 2
    if df % 2:
        k, q = 1, math.erfc(math.sqrt(half))
    else:
        k, q = 2, math.exp(-half)
    while k < df:
        if half > 0:
            q += math.exp((k / 2) * math.log(half) - half - math.lgamma(k / 2 + 1))
        k += 2
    return min(q, 1.0)


def assert_follows(values: Sequence[int], law: Mapping[int, float]) -> None:
    """Pearson's chi-square goodness of fit of ``values`` to ``{value: probability}``.

    Values the law gives probability 0 must not occur at all. Bins expected to hold
    fewer than 5 draws are pooled into one, as the test's approximation requires.
    """
    counts = Counter(values)
    impossible = sorted(set(counts) - {v for v, p in law.items() if p > 0})
    assert not impossible, f"drew values outside the law's support: {impossible}"
    n = len(values)
    bins: list[tuple[float, int]] = []  # (expected, observed)
    pooled_expected, pooled_observed = 0.0, 0
    for value, probability in sorted(law.items()):
        if probability <= 0:
            continue
        if n * probability >= 5:
            bins.append((n * probability, counts[value]))
        else:
            pooled_expected += n * probability
            pooled_observed += counts[value]
    if pooled_expected > 0:
        bins.append((pooled_expected, pooled_observed))
    if len(bins) < 2:
        return  # one bin: every draw is in the support, which was checked above
    statistic = sum((observed - expected) ** 2 / expected for expected, observed in bins)
    p_value = chi2_sf(statistic, len(bins) - 1)
    assert p_value >= ALPHA, (
        f"chi-square {statistic:.2f} with {len(bins) - 1} degrees of freedom: p = {p_value:.2g}"
    )


def assert_moments(
    values: Sequence[int], law: Mapping[int, float], mean: float, variance: float
) -> None:
    """The law has this ``mean`` and ``variance``, and so do the draws, within 4.5 SEs.

    ``mean`` and ``variance`` are the closed forms the sampler documents; they are
    checked against ``law`` (its ``probabilities()``) exactly, and against the sample.
    The standard errors come from the law: sqrt(var / n) for the mean, and the exact
    standard deviation of the sample variance, from mu4, the fourth central moment.
    """
    law_mean = sum(v * p for v, p in law.items())
    law_variance = sum((v - law_mean) ** 2 * p for v, p in law.items())
    mu4 = sum((v - law_mean) ** 4 * p for v, p in law.items())
    assert math.isclose(law_mean, mean, rel_tol=1e-9, abs_tol=1e-12), (law_mean, mean)
    assert math.isclose(law_variance, variance, rel_tol=1e-9, abs_tol=1e-12), (
        law_variance,
        variance,
    )
    n = len(values)
    sample_mean = sum(values) / n
    sample_variance = sum((v - sample_mean) ** 2 for v in values) / (n - 1)
    z = 4.5
    mean_se = math.sqrt(variance / n)
    # Var(s^2) = mu4 / n - var^2 (n - 3) / (n (n - 1)), exactly, for any law; it is
    # O(1/n^2) for a symmetric two-point law, whose s^2 is far from normal: there a
    # floor of 10 var / n keeps the check from demanding more than it can know.
    variance_se = math.sqrt(max(mu4 / n - variance**2 * (n - 3) / (n * (n - 1)), 0.0))
    variance_se = max(variance_se, 10 * variance / n / z)
    assert abs(sample_mean - mean) <= z * mean_se + 1e-12, (
        f"mean {sample_mean:.4f}, expected {mean:.4f} (standard error {mean_se:.4f})"
    )
    assert abs(sample_variance - variance) <= z * variance_se + 1e-12, (
        f"variance {sample_variance:.4f}, expected {variance:.4f} "
        f"(standard error {variance_se:.4f})"
    )
