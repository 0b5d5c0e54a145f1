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


@pytest.fixture(scope="module")
def generated_and_real(tmp_path_factory):
    """A 14-image ``medsd generate`` dataset (tiny DDPM, 16 px) and a folder of 12 real-looking PNGs."""
    import torch
    from diffusers import DDPMScheduler
    from PIL import Image

    from medsd.cli import main
    from medsd.models import LightUNet2DModel
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    root = tmp_path_factory.mktemp("whole_set_fd")
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    pipe = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=100).config))
    pipe.save_pretrained(root / "model")
    gen = ["generate", str(root / "model"), "--out", str(root / "fake"), "--num_images", "14"]
    assert main([*gen, "--num_inference_steps", "2"]) == 0
    (root / "real").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        img = (np.linspace(0, 200, 16)[None, :] + rng.normal(0, 20, (16, 16))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "real" / f"r{i:02d}.png")
    return root / "fake", root / "real"


def test_streamed_dataset_fd_holds_one_chunk_and_equals_the_all_at_once_fd(generated_and_real):
    from medsd.metrics.dataset_fd import is_generated_dataset, stream_feature_stats
    from medsd.metrics.features import get_extractor
    from medsd.metrics.io import load_image_set

    fake, real = generated_and_real
    assert is_generated_dataset(fake) and not is_generated_dataset(real)
    assert not is_generated_dataset(np.zeros((2, 8, 8)))  # an in-memory set, as evaluate() accepts
    radiomics = get_extractor("radiomics", size=32)
    chunks: list[int] = []

    def recording(images):
        chunks.append(len(images))
        return radiomics(images)

    stats = {s: stream_feature_stats(s, recording, 32, chunk_size=5) for s in (real, fake)}
    assert chunks == [5, 5, 2, 5, 5, 4]  # never more than one chunk of images at a time
    assert stats[fake].count == 14 and stats[real].count == 12
    at_once = [radiomics(load_image_set(s, 32).images) for s in (real, fake)]
    expected = frechet_distance(*at_once)
    assert frechet_distance_of_stats(stats[real], stats[fake]) == pytest.approx(expected, rel=1e-6)
    shards = [stream_feature_stats(fake, radiomics, 32, chunk_size=4, rank=r, world=2) for r in (0, 1)]
    assert [s.count for s in shards] == [8, 6]  # chunks 0, 2 and 1, 3 of two processes
    merged = FeatureStats.merged(shards)
    assert frechet_distance_of_stats(stats[real], merged) == pytest.approx(expected, rel=1e-6)


def test_eval_of_a_generated_dataset_reports_the_fd_of_every_image_beyond_max_images(
    generated_and_real, tmp_path, monkeypatch
):
    from medsd.metrics import dataset_fd
    from medsd.metrics.evaluate import EvalConfig, evaluate

    fake, real = generated_and_real
    cfg = EvalConfig(
        real=str(real),
        fake=str(fake),
        out=str(tmp_path / "out"),
        size=32,
        max_images=6,
        c2st=False,
        reference_draws=0,
        kid_subsets=2,
        diversity_pairs=4,
        image_figures=False,
        progress=False,
    )
    report, _ = evaluate(cfg, log=lambda s: None)
    assert report["sets"]["fake"]["n_images"] == 6  # the in-memory metrics see a capped subsample
    whole = report["whole_set_fd"]["radiomics"]
    assert whole["n_fake"] == 14 and whole["n_real"] == 12 and whole["frechet_distance"] > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Whole-set Fréchet distance" in markdown and "| radiomics |" in markdown
    # without --max_images a generated dataset is still not loaded whole: at most IN_MEMORY_IMAGES of it
    monkeypatch.setattr(dataset_fd, "IN_MEMORY_IMAGES", 5)
    uncapped = EvalConfig(**{**cfg.__dict__, "max_images": None, "out": str(tmp_path / "o2")})
    report, _ = evaluate(uncapped, log=lambda s: None)
    assert report["sets"]["fake"]["n_images"] == 5 and report["sets"]["real"]["n_images"] == 12
    assert report["whole_set_fd"]["radiomics"]["n_fake"] == 14
