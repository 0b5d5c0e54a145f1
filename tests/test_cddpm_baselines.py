"""Classical restoration baselines of the cDDPM table and the ``medsd cddpm-eval`` command."""

from __future__ import annotations

import json

import pytest
import torch

from medsd.metrics.baselines import (
    BASELINES,
    biharmonic_fill,
    identity,
    mean_fill,
    median_filter,
    run_baseline,
    upscale_bicubic,
    upscale_bilinear,
)


def test_upscaling_baselines():
    c = torch.full((2, 1, 4, 4), 0.3)
    for fn in (upscale_bilinear, upscale_bicubic):
        up = fn(c, 16)
        assert up.shape == (2, 1, 16, 16) and torch.allclose(up, torch.full_like(up, 0.3), atol=1e-6)
    ramp = torch.linspace(-1, 1, 8).repeat(8, 1)[None, None]
    lin, cub = upscale_bilinear(ramp, 16), upscale_bicubic(ramp, 16)
    assert not torch.allclose(lin, cub)
    # the low-resolution image is the area mean of the interpolation's blocks, roughly
    assert (torch.nn.functional.avg_pool2d(cub, 2) - ramp).abs()[..., 1:-1, 1:-1].max() < 0.05


def test_denoising_baselines():
    x = torch.zeros(1, 1, 9, 9)
    noisy = x.clone()
    noisy[0, 0, 4, 4] = 1.0  # an isolated salt pixel
    noisy[0, 0, 0, 0] = -1.0  # pepper at a corner
    assert torch.equal(identity(noisy), noisy) and identity(noisy) is not noisy
    assert torch.equal(median_filter(noisy, 3), x)
    assert torch.equal(median_filter(noisy, 1), noisy)
    with pytest.raises(ValueError):
        median_filter(noisy, 2)


def test_inpainting_baselines():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
    plane = (0.5 * xx + 0.25 * yy)[None, None]
    mask = torch.zeros_like(plane)
    mask[..., 8:14, 6:12] = 1
    known = mask < 0.5
    filled = mean_fill(plane, mask)
    assert torch.equal(filled[known], plane[known])
    assert torch.allclose(filled[~known], plane[known].mean().expand(int((~known).sum())), atol=1e-6)
    bih = biharmonic_fill(plane, mask)
    assert torch.allclose(bih[known], plane[known], atol=1e-6)
    assert (bih - plane)[~known].abs().max() < 0.02  # a plane is biharmonic: reconstructed
    assert (filled - plane)[~known].abs().max() > 0.1


def test_run_baseline_dispatch():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    low = torch.nn.functional.avg_pool2d(x, 4)
    m = torch.zeros_like(x)
    m[..., 4:8, 4:8] = 1
    for task, names in BASELINES.items():
        for name in names:
            out = run_baseline(task, name, x, low_res=low, mask=m)
            assert out.shape == x.shape
    with pytest.raises(ValueError):
        run_baseline("sr", "median", x, low_res=low)
    with pytest.raises(ValueError):
        run_baseline("sr", "bicubic", x)
    with pytest.raises(ValueError):
        run_baseline("inpaint", "mean_fill", x)


@pytest.mark.parametrize("task", ["sr", "inpaint"])
def test_cddpm_eval_command_writes_table_json_and_figure(tmp_path, task):
    from medsd.commands import cddpm_eval
    from medsd.data.degradations import Degradation
    from medsd.models import LightUNet2DModel
    from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler

    d = Degradation(task, factor=4.0)
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, in_channels=1 + d.cond_channels, block_out_channels=(8, 16))
    pipe = MedCDDPMPipeline(unet=unet, scheduler=paper_scheduler(50))
    pipe.medsd_metadata = {
        "task": task,
        "cond_channels": d.cond_channels,
        "degradation": d.to_dict(),
        "resolution": 16,
    }
    pipe.save_pretrained(tmp_path / "model")

    import argparse

    parser = argparse.ArgumentParser()
    cddpm_eval.register(parser.add_subparsers())
    argv = [
        "cddpm-eval",
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(tmp_path / "eval"),
        "--data",
        "phantom",
        "--phantom_count",
        "60",
        "--num_images",
        "4",
        "--num_samples",
        "2",
        "--sampler",
        "dpm",
        "--num_inference_steps",
        "2",
        "--batch_size",
        "3",
        "--no_lpips",
        "--figure_rows",
        "2",
    ]
    if task == "sr":
        argv += ["--factor", "2.8284,4"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["task"] == task and report["num_images"] == 4 and report["split"] == "test"
    settings = report["results"]
    assert len(settings) == (2 if task == "sr" else 1)
    rows = settings[0]["metrics"]
    assert set(rows) == {*BASELINES[task], "cDDPM (1 sample)", "cDDPM (mean of 2)"}
    for r in rows.values():
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["edge_sharpness"] > 0
        assert r["lpips"] is None and "frechet_radiomics" in r
        assert "not comparable to published FID" in r["distance_note"]
    assert "LPIPS skipped" in report["lpips_note"]
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| cDDPM (mean of 2) |" in md and "PSNR" in md
    assert "edge sharpness" in md and "acutance |" not in md and "not comparable to published FID" in md
    for s in settings:
        assert (tmp_path / "eval" / s["figure"]).is_file()


def _phantom_args(num_images, seed, subsample_seed=None):
    import argparse

    from medsd.commands import cddpm_eval

    parser = argparse.ArgumentParser()
    cddpm_eval.register(parser.add_subparsers())
    argv = ["cddpm-eval", "--model", "m", "--out", "o", "--phantom_count", "40"]
    argv += ["--num_images", str(num_images), "--seed", str(seed)]
    if subsample_seed is not None:
        argv += ["--subsample_seed", str(subsample_seed)]
    return parser.parse_args(argv)


def test_cddpm_eval_num_images_is_a_seeded_stratified_subsample():
    from medsd.commands.cddpm_eval import load_test_images

    # phantom patient ids are their index in the source: the old behaviour gave "0".."5"
    def ids(**kw):
        images, pids = load_test_images(_phantom_args(**kw), resolution=16, seed=0)
        assert images.shape == (len(pids), 1, 16, 16)
        return pids

    a = ids(num_images=6, seed=0)
    assert len(a) == 6 and len(set(a)) == 6
    assert a != [str(i) for i in range(6)]
    assert ids(num_images=6, seed=0) == a  # reproducible
    assert ids(num_images=6, seed=1) != a  # the seed matters
    assert ids(num_images=6, seed=5, subsample_seed=0) == a  # --subsample_seed overrides --seed


def test_cddpm_eval_subsample_keeps_label_shares_and_spreads_patients():
    from medsd.commands.cddpm_eval import choose_test_indices

    class Listing:
        # 30 "A" images of 3 patients listed first, then 10 "B" images of 10 patients
        labels = ["A"] * 30 + ["B"] * 10
        patient_ids = [f"a{i // 10}" for i in range(30)] + [f"b{i}" for i in range(10)]

        def __len__(self):
            return 40

    ds = Listing()
    idx = choose_test_indices(ds, 8, seed=3)
    labels = [ds.labels[i] for i in idx]
    assert labels.count("A") == 6 and labels.count("B") == 2  # 3:1 as in the whole set
    assert {ds.patient_ids[i] for i in idx if ds.labels[i] == "A"} == {"a0", "a1", "a2"}
    assert choose_test_indices(ds, 100, seed=3) == list(range(40))
