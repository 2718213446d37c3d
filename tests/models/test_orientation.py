"""The orientation check's threshold rule on generated features: as low as still refusing 99.5 % of each transform on
val, never above the 1st percentile of upright val images (issue 23, finding 5; decided on val, BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.models.orientation import CATCH_PERCENTILE, FALSE_REFUSAL_PERCENTILE, TRANSFORMS, fit_orientation


def features(n: int, *, spread: float, seed: int) -> dict[str, np.ndarray]:
    """Six clusters, one per transform, ``spread`` wide around centres 1 apart (small spread: well separated)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(len(TRANSFORMS), 16))
    return {name: centres[i] + spread * rng.normal(size=(n, 16)) for i, name in enumerate(TRANSFORMS)}


@pytest.mark.parametrize(("spread", "capped"), [(0.3, False), (1.5, True)])
def test_the_threshold_refuses_each_transform_on_val_unless_the_cap_on_upright_refusals_holds_it(
        spread: float, capped: bool) -> None:
    """The reported refusal shares are the threshold's on val; the threshold is the transforms' where they are
    separable (every one refused at >= CATCH_PERCENTILE), else the cap (1st percentile of upright val images)."""
    head, refused = fit_orientation(features(300, spread=spread, seed=0), val := features(300, spread=spread, seed=1))
    upright = {name: head.probabilities(val[name])[:, 0] for name in TRANSFORMS}
    assert refused == {name: pytest.approx(float(np.mean(p < head.threshold))) for name, p in upright.items()}
    cap = np.percentile(upright["upright"], FALSE_REFUSAL_PERCENTILE)
    assert head.threshold <= cap and refused["upright"] <= 0.011
    assert (head.threshold == pytest.approx(cap)) == capped
    caught = min(refused[name] for name in TRANSFORMS[1:])
    assert (caught >= CATCH_PERCENTILE / 100) == (not capped)  # capped: the transforms are not all caught


def test_well_separated_transforms_give_a_low_threshold_and_no_false_refusals() -> None:
    """What the rule is for: where the transforms are far from upright, the 1st-percentile rule refused ~1 % of
    upright images for nothing; the new threshold refuses none and still catches every transform."""
    head, refused = fit_orientation(features(300, spread=0.3, seed=0), features(300, spread=0.3, seed=1))
    assert refused["upright"] == 0.0
    assert all(refused[name] >= CATCH_PERCENTILE / 100 for name in TRANSFORMS[1:])
    assert head.threshold < 0.5


def test_overlapping_transforms_keep_the_percentile_cap() -> None:
    """Where a transform overlaps upright, catching 99.5 % of it would refuse many upright images: the cap holds."""
    head, refused = fit_orientation(features(300, spread=3.0, seed=0), val := features(300, spread=3.0, seed=1))
    upright = head.probabilities(val["upright"])[:, 0]
    assert head.threshold == pytest.approx(np.percentile(upright, FALSE_REFUSAL_PERCENTILE))
    assert refused["upright"] <= 0.011
