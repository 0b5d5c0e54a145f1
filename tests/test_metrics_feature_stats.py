"""Fréchet distance from statistics merged over chunks and processes equals the all-at-once FD."""

from __future__ import annotations

import numpy as np
import pytest

from medsd.metrics import FeatureStats, frechet_distance, frechet_distance_of_stats


def _sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(12, 12))
    real = rng.normal(size=(1000, 12)) @ mix + 50.0  # a large mean: the merge must not cancel it away
    fake = rng.normal(size=(700, 12)) @ (mix * 1.1) + 50.5
    return real, fake


@pytest.mark.parametrize("chunk", [1, 7, 128, 1000])
def test_merged_chunk_statistics_give_the_all_at_once_fd(chunk):
    real, fake = _sets()
    stats = [
        FeatureStats.merged(FeatureStats.of(x[i : i + chunk]) for i in range(0, len(x), chunk))
        for x in (real, fake)
    ]
    assert stats[0].count == 1000 and stats[1].count == 700
    np.testing.assert_allclose(stats[0].covariance, np.cov(real, rowvar=False), rtol=1e-9, atol=1e-9)
    expected = frechet_distance(real, fake)
    assert frechet_distance_of_stats(*stats) == pytest.approx(expected, rel=1e-6)


def test_processes_merge_in_any_order_and_per_shard_averages_are_not_the_fd():
    real, fake = _sets(1)
    shards = np.array_split(fake, 3)  # what three processes would hold
    per_process = [FeatureStats.of(s) for s in shards]
    saved = [FeatureStats.from_arrays(p.to_arrays()) for p in per_process]  # through np.savez's form
    real_stats = FeatureStats.of(real)
    forward = frechet_distance_of_stats(real_stats, FeatureStats.merged(saved))
    backward = frechet_distance_of_stats(real_stats, FeatureStats.merged(reversed(saved)))
    expected = frechet_distance(real, fake)
    assert forward == pytest.approx(expected, rel=1e-6) and backward == pytest.approx(expected, rel=1e-6)
    shard_mean = np.mean([frechet_distance(real, s) for s in shards])
    assert abs(shard_mean - expected) > 1e-3 * expected  # why CheXGenBench's shard average is not the FD


def test_empty_and_mismatched_statistics():
    a = FeatureStats.of(np.ones((3, 2)))
    assert FeatureStats().merge(a) is a and a.merge(FeatureStats()) is a
    with pytest.raises(ValueError, match="feature sizes differ"):
        a.merge(FeatureStats.of(np.ones((3, 4))))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats.of(np.ones((1, 2))).covariance
