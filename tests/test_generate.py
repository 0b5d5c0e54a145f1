"""``medsd generate`` for DDPM, cDDPM and text-to-X-ray: sidecars, bit-for-bit regeneration, batch invariance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sd_fixtures
import torch
from diffusers import DDPMScheduler
from PIL import Image

from medsd.cli import main
from medsd.data.degradations import Degradation
from medsd.data.intensity import WindowMapping
from medsd.models import LightUNet2DModel
from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    p = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=100).config))
    p.intensity_mapping = WindowMapping(-1000.0, 400.0)
    folder = tmp_path_factory.mktemp("gen") / "ddpm"
    p.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cddpm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = Degradation("inpaint")
    unet = LightUNet2DModel(
        sample_size=16, in_channels=1 + d.cond_channels, block_out_channels=(8, 16), norm_num_groups=8
    )
    p = MedCDDPMPipeline(unet=unet, scheduler=paper_scheduler(20))
    p.medsd_metadata = {"task": "inpaint", "cond_channels": d.cond_channels, "degradation": d.to_dict()}
    folder = tmp_path_factory.mktemp("gen") / "cddpm"
    p.save_pretrained(folder)
    return folder


def _npy(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


def _run(*args: str) -> None:
    assert main(["generate", *map(str, args)]) == 0


def test_ddpm_batch_size_does_not_change_images_and_sidecar_regenerates(ddpm_dir, tmp_path):
    common = [ddpm_dir, "--num_images", 5, "--num_inference_steps", 4, "--format", "npy", "--device", "cpu"]
    common += ["--batch_invariant", "true"]
    _run(*common, "--out", tmp_path / "b1", "--batch_size", 1)
    _run(*common, "--out", tmp_path / "b3", "--batch_size", 3)
    one, three = _npy(tmp_path / "b1"), _npy(tmp_path / "b3")
    assert len(one) == 5 and one.keys() == three.keys()
    assert all(np.array_equal(one[k], three[k]) for k in one), "an image changed with --batch_size"
    assert not np.array_equal(one["image_00000"], one["image_00001"])  # seeds differ per image
    meta = json.loads((tmp_path / "b3" / "image_00003.json").read_text())
    assert meta["family"] == "ddpm" and meta["seed"] == 3 and meta["num_inference_steps"] == 4
    assert meta["model"] == str(ddpm_dir.resolve()) and len(meta["weights_sha256"]) == 64
    assert meta["scheduler_class"] == "DPMSolverMultistepScheduler"
    # regenerated alone, from its sidecar, into another folder: bit for bit
    _run("--from_sidecar", tmp_path / "b3" / "image_00003.json", "--out", tmp_path / "again")
    again = _npy(tmp_path / "again")
    assert list(again) == ["image_00003"] and np.array_equal(again["image_00003"], one["image_00003"])


def test_batched_mode_records_its_batch_and_still_regenerates_exactly(ddpm_dir, tmp_path):
    common = [ddpm_dir, "--num_images", 3, "--num_inference_steps", 4, "--format", "npy"]
    _run(*common, "--out", tmp_path / "exact")
    _run(*common, "--out", tmp_path / "fast", "--batch_size", 3, "--batch_invariant", "false")
    exact, fast = _npy(tmp_path / "exact"), _npy(tmp_path / "fast")
    # batched convolutions round differently in the last bits only
    assert max(np.abs(exact[k] - fast[k]).max() for k in exact) < 1e-3
    meta = json.loads((tmp_path / "fast" / "image_00002.json").read_text())
    assert meta["batch_invariant"] is False and meta["batch"]["position"] == 2
    assert [b["seed"] for b in meta["batch"]["images"]] == [0, 1, 2]
    _run("--from_sidecar", tmp_path / "fast" / "image_00002.json", "--out", tmp_path / "again")
    assert np.array_equal(_npy(tmp_path / "again")["image_00002"], fast["image_00002"])


def test_sidecar_refuses_changed_weights(ddpm_dir, tmp_path):
    _run(ddpm_dir, "--num_images", 1, "--num_inference_steps", 2, "--out", tmp_path / "a")
    side = tmp_path / "a" / "image_00000.json"
    meta = json.loads(side.read_text())
    meta["weights_sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    assert main(["generate", "--from_sidecar", str(side), "--out", str(tmp_path / "b")]) == 2
    assert (
        main(["generate", "--from_sidecar", str(side), "--out", str(tmp_path / "c"), "--ignore_weights_hash"])
        == 0
    )


def test_sample_is_an_alias_of_generate(ddpm_dir, tmp_path):
    args = ["--num_images", "2", "--num_inference_steps", "3", "--format", "npy"]
    assert main(["sample", "--model", str(ddpm_dir), "--out", str(tmp_path / "s"), *args]) == 0
    _run(ddpm_dir, "--out", tmp_path / "g", *args)
    s, g = _npy(tmp_path / "s"), _npy(tmp_path / "g")
    assert list(s) == ["sample_00000", "sample_00001"]
    assert np.array_equal(s["sample_00001"], g["image_00001"])


def test_cddpm_inpaints_condition_folder_and_csv(cddpm_dir, tmp_path):
    conds, masks = tmp_path / "cond", tmp_path / "masks"
    conds.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(conds / name)
        Image.fromarray(mask).save(masks / name)
    common = ["--num_inference_steps", 5, "--format", "png8", "--scheduler", "ddim"]
    _run(
        cddpm_dir, "--condition", conds, "--mask", masks, "--num_images", 2, "--out", tmp_path / "o", *common
    )
    pngs = sorted((tmp_path / "o").glob("*.png"))
    assert len(pngs) == 4  # 2 condition images x 2 samples
    meta = json.loads((tmp_path / "o" / "image_00002.json").read_text())
    assert meta["family"] == "cddpm" and meta["task"] == "inpaint"
    assert meta["condition"] == str((conds / "b.png").resolve()) and meta["mask"].endswith("b.png")
    out = np.asarray(Image.open(pngs[2]))
    known = mask == 0
    src = np.asarray(Image.open(conds / "b.png"))
    assert np.abs(out[known].astype(int) - src[known]).max() <= 1  # known pixels kept
    # the same pairs from a CSV give the same images
    (tmp_path / "c.csv").write_text("condition,mask\ncond/a.png,masks/a.png\ncond/b.png,masks/b.png\n")
    _run(cddpm_dir, "--condition", tmp_path / "c.csv", "--num_images", 2, "--out", tmp_path / "csv", *common)
    csv_pngs = sorted((tmp_path / "csv").glob("*.png"))
    assert [Image.open(p).tobytes() for p in csv_pngs] == [Image.open(p).tobytes() for p in pngs]
    _run("--from_sidecar", tmp_path / "o" / "image_00002.json", "--out", tmp_path / "again")
    assert Image.open(tmp_path / "again" / "image_00002.png").tobytes() == Image.open(pngs[2]).tobytes()


def test_cddpm_without_condition_is_one_line_error(cddpm_dir, tmp_path, capsys):
    assert main(["generate", str(cddpm_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    # diffusers' own "Loading pipeline components" bar may come first; the error itself is one line
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "--condition" in errors[0] and "Traceback" not in err


def test_text_to_xray_with_string_negative_prompt(tiny_sd_base, tmp_path, capsys):
    common = [tiny_sd_base, "--num_inference_steps", 2, "--format", "npy", "--num_images", 2]
    common += ["--prompt", "a chest x-ray, opacity", "--prompt", "a chest x-ray, no finding"]
    common += ["--negative_prompt", "blurry", "--guidance_scale", 3.0, "--batch_invariant", "true"]
    _run(*common, "--out", tmp_path / "b1", "--batch_size", 1)
    assert "denoising" in capsys.readouterr().err  # the pipeline's progress bar is shown
    _run(*common, "--out", tmp_path / "b3", "--batch_size", 3)
    one, three = _npy(tmp_path / "b1"), _npy(tmp_path / "b3")
    assert len(one) == 4 and all(np.array_equal(one[k], three[k]) for k in one)
    meta = json.loads((tmp_path / "b1" / "image_00002.json").read_text())
    assert meta["family"] == "text2xray" and meta["prompt"] == "a chest x-ray, no finding"
    assert meta["negative_prompt"] == "blurry" and meta["guidance_scale"] == 3.0 and meta["seed"] == 2
    _run("--from_sidecar", tmp_path / "b1" / "image_00002.json", "--out", tmp_path / "again")
    assert np.array_equal(_npy(tmp_path / "again")["image_00002"], one["image_00002"])


def test_text_to_xray_pipeline_takes_a_string_negative_prompt(tiny_sd_base):
    from medsd.pipelines.auto import MedPipeline

    pipe = MedPipeline.from_pretrained(tiny_sd_base)
    kw = dict(num_inference_steps=2, output_type="np", num_images_per_prompt=1)
    a = pipe(["a", "b"], negative_prompt="blurry", generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe(
        ["a", "b"], negative_prompt=["blurry"] * 2, generator=torch.Generator().manual_seed(0), **kw
    ).images
    assert a.shape[0] == 2 and np.array_equal(a, b)


@pytest.mark.parametrize("native_bf16, expected", [("1", "bfloat16"), ("0", "float32")])
def test_dtype_auto_follows_the_cpu_and_bf16_stays_close_to_fp32(
    ddpm_dir, tmp_path, monkeypatch, native_bf16, expected
):
    monkeypatch.setenv("MEDSD_CPU_BF16", native_bf16)
    seen = []
    real_call = MedDDPMPipeline.__call__

    def spy(self, *args, **kwargs):
        convs = [w for w in self.unet.parameters() if w.ndim == 4 and w.shape[1] > 1 and w.shape[-1] > 1]
        layout = all(
            w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs
        )
        seen.append((kwargs.get("autocast_dtype"), kwargs.get("batch_size"), layout))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(MedDDPMPipeline, "__call__", spy)
    common = [ddpm_dir, "--num_images", 2, "--num_inference_steps", 3, "--format", "npy", "--device", "cpu"]
    _run(*common, "--out", tmp_path / "auto")
    autocast = None if expected == "float32" else getattr(torch, expected)
    if expected == "bfloat16":  # auto: one batched call, the U-Net channels-last for oneDNN's bf16 kernels
        assert seen == [(autocast, 2, True)]
    else:  # fp32 on a CPU: one pipeline call per image (batch-invariant), the default layout
        assert seen == [(None, 1, False), (None, 1, False)]
    assert json.loads((tmp_path / "auto" / "image_00001.json").read_text())["dtype"] == expected
    _run(*common, "--out", tmp_path / "fp32", "--dtype", "fp32")
    auto, fp32 = _npy(tmp_path / "auto"), _npy(tmp_path / "fp32")
    for k in fp32:
        assert np.isfinite(auto[k]).all()
        span = fp32[k].max() - fp32[k].min()
        assert np.abs(auto[k] - fp32[k]).mean() < 0.02 * span, "bf16 autocast drifted from fp32"
    if expected == "bfloat16":
        assert any(not np.array_equal(auto[k], fp32[k]) for k in fp32), "bf16 ran in fp32"
    else:
        assert all(np.array_equal(auto[k], fp32[k]) for k in fp32)


def test_unipc_is_one_registry_entry_away_for_ddpm_and_cddpm(ddpm_dir, cddpm_dir, tmp_path):
    from medsd.pipelines.samplers import SAMPLER_NAMES

    assert "unipc" in SAMPLER_NAMES
    _run(ddpm_dir, "--num_images", 1, "--num_inference_steps", 3, "--format", "npy", "--scheduler", "unipc",
         "--out", tmp_path / "d")  # fmt: skip
    meta = json.loads((tmp_path / "d" / "image_00000.json").read_text())
    assert meta["scheduler_class"] == "UniPCMultistepScheduler"
    assert np.isfinite(np.load(tmp_path / "d" / "image_00000.npy")).all()
    cond = tmp_path / "cond.png"
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(cond)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4)).save(mask)
    # 5 steps: this test model has 20 training steps, and UniPC needs distinct timesteps
    _run(cddpm_dir, "--condition", cond, "--mask", mask, "--scheduler", "unipc", "--format", "npy",
         "--num_inference_steps", 5, "--out", tmp_path / "c")  # fmt: skip
    meta = json.loads((tmp_path / "c" / "image_00000.json").read_text())
    assert meta["scheduler"] == "unipc" and np.isfinite(np.load(tmp_path / "c" / "image_00000.npy")).all()


def test_sidecars_of_both_dtypes_regenerate_exactly_in_one_command(ddpm_dir, tmp_path):
    common = [ddpm_dir, "--num_images", 2, "--num_inference_steps", 3, "--format", "npy", "--device", "cpu"]
    _run(*common, "--dtype", "bf16", "--out", tmp_path / "bf16")  # batched, U-Net channels-last
    _run(*common, "--dtype", "fp32", "--out", tmp_path / "fp32")  # one image per call, NCHW
    sidecars = [tmp_path / "bf16" / "image_00000.json", tmp_path / "fp32" / "image_00001.json"]
    _run("--from_sidecar", *sidecars, "--out", tmp_path / "again")  # one model loaded, both layouts in turn
    again = _npy(tmp_path / "again")
    assert np.array_equal(again["image_00000"], _npy(tmp_path / "bf16")["image_00000"])
    assert np.array_equal(again["image_00001"], _npy(tmp_path / "fp32")["image_00001"])
