"""Cases for the model-folder and command side of ``tests/test_bad_input.py``: one line naming the input and
what was expected.

Every case builds its input on the fly in ``tmp_path`` (tiny models from configs, no download) and runs
``medsd.cli.main`` in-process. An ``error`` case asserts a non-zero exit, exactly one line on stderr (no
traceback) that contains the names given (the flag, file or key and what was expected), and that the paths in
``absent`` were not created (no partial output). An ``ok`` case asserts exit 0 and its ``check``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from medsd.cli import main
from medsd.models import LightUNet2DModel
from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

MARKER = "CODE_RAN"
"""Written by the code planted in a model folder if anything ever runs it."""


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[str]]
    """Makes the inputs in tmp_path; returns the argv of ``medsd``."""
    expect: str = "error"
    """"error": one-line refusal; "ok": exit 0 and ``check``."""
    names: tuple[str, ...] = ()
    """Substrings the error line must contain (the input and what was expected)."""
    absent: tuple[str, ...] = ()
    """Paths (relative to tmp_path) that must not exist afterwards."""
    check: Callable[[Path], None] | None = None
    cwd: str | None = None
    """Run from this sub-folder of tmp_path, with it first on sys.path (as `python -m medsd` would)."""
    needs_no_cuda: bool = False


# -- tiny models ----------------------------------------------------------------------------------------------
def ddpm(folder: Path, stock: bool = False, pickle: bool = False, mapping=None) -> Path:
    torch.manual_seed(0)
    if stock:  # a diffusers UNet2DModel: saved as a stock "DDPMPipeline" folder
        unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 8),
            norm_num_groups=4,
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
    else:
        unet = LightUNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4)
    pipe = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=50).config))
    pipe.intensity_mapping = mapping
    pipe.save_pretrained(folder, safe_serialization=not pickle)
    return folder


def cddpm(folder: Path) -> Path:
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=8, in_channels=2, block_out_channels=(8, 8), norm_num_groups=4)
    pipe = MedCDDPMPipeline(unet=unet, scheduler=paper_scheduler(20))
    pipe.medsd_metadata = {"task": "denoise", "cond_channels": 1, "resolution": 8}
    pipe.save_pretrained(folder)
    return folder


def lora(folder: Path, info: str | None = None, weights: str = "pytorch_lora_weights.safetensors") -> Path:
    """A LoRA folder's files (the weights are never read: every case here is refused before that)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(folder / "weights.safetensors"))
    (folder / "weights.safetensors").rename(folder / weights)
    text = info if info is not None else json.dumps({"base_model": "/nonexistent/sd-base", "resolution": 32})
    (folder / "medsd_lora.json").write_text(text)
    return folder


def sd_base(tmp_path: Path) -> Path:
    """The tiny random Stable Diffusion pipeline, built once per session and copied per case."""
    from medsd.pipelines.random_sd import save_random_sd_pipeline

    shared = save_random_sd_pipeline(tmp_path.parent / "bad_input_tiny_sd", size="tiny")
    return Path(shutil.copytree(shared, tmp_path / "sd"))


def edit_index(folder: Path, change: Callable[[dict], None]) -> Path:
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))
    return folder


def plant(path: Path, tmp_path: Path) -> None:
    """Python code that leaves MARKER in tmp_path if it is ever imported."""
    path.write_text(
        f"from pathlib import Path\nPath({str(tmp_path / MARKER)!r}).write_text('ran')\n"
        "from medsd.pipelines.ddpm import MedDDPMPipeline  # noqa\nclass Evil:\n    pass\n"
    )


def png(folder: Path, n: int = 3, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((np.arange(size * size).reshape(size, size) * (i + 1) % 255).astype(np.uint8)).save(
            folder / f"img_{i}.png"
        )
    return folder


def yaml_file(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


GEN = ["--num_images", "1", "--num_inference_steps", "1", "--device", "cpu"]


def gen(model: Path | str, *extra: str) -> list[str]:
    return ["generate", str(model), "--out", "out", *GEN, *extra]


def wrote_images(n: int) -> Callable[[Path], None]:
    def check(tmp_path: Path) -> None:
        out = next(p for p in (tmp_path / "out", tmp_path.parent / "out") if p.is_dir())
        sidecars = [p for p in out.glob("*.json") if p.name != "manifest.json"]
        assert len(list(out.glob("*.png"))) == n and len(sidecars) == n

    return check


def no_marker(tmp_path: Path) -> None:
    assert not (tmp_path / MARKER).exists(), "code from the model folder ran"


def both(*checks: Callable[[Path], None]) -> Callable[[Path], None]:
    def check(tmp_path: Path) -> None:
        for c in checks:
            c(tmp_path)

    return check


# -- model folders ---------------------------------------------------------------------------------------------
def _component_code(t: Path) -> list[str]:
    m = edit_index(ddpm(t / "m"), lambda i: i.update(unet=["evilmod", "Evil"]))
    plant(m / "unet" / "evilmod.py", t)
    return gen(m)


def _custom_pipeline_code(t: Path) -> list[str]:
    m = edit_index(ddpm(t / "m"), lambda i: i.update(_class_name=["evilpipe", "MedDDPMPipeline"]))
    plant(m / "evilpipe.py", t)
    return gen(m)


def _tampered_shim(t: Path) -> list[str]:
    m = ddpm(t / "m")
    plant(m / "pipeline_medsd.py", t)
    return ["generate", ".", "--out", str(t / "out"), *GEN]


def checkpoint(t: Path) -> Path:
    """A training checkpoint folder (as medsd.training.checkpoints writes it) inside a run folder."""
    ckpt = t / "run" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "medsd_checkpoint.json").write_text('{"step": 10}')
    (ckpt / "model.safetensors").write_bytes(b"")
    return ckpt


def _checkpoint(t: Path, run_only: bool = False) -> list[str]:
    ckpt = checkpoint(t)
    return gen(ckpt.parent if run_only else ckpt)


def _drop(folder: Path, sub: str) -> Path:
    shutil.rmtree(folder / sub)
    return folder


def _sd_pickle_text_encoder(t: Path) -> list[str]:
    sd = sd_base(t)
    weights = next((sd / "text_encoder").glob("*.safetensors"))
    weights.rename(weights.with_name("pytorch_model.bin"))
    return gen(sd, "--prompt", "a chest x-ray")


MODEL_CASES = [
    Case("safetensors_light_ddpm_loads", lambda t: gen(ddpm(t / "m")), "ok", check=wrote_images(1)),
    Case("stock_ddpm_folder_loads", lambda t: gen(ddpm(t / "m", stock=True)), "ok", check=wrote_images(1)),
    Case(
        "plain_stable_diffusion_folder_loads",
        lambda t: gen(sd_base(t), "--prompt", "a chest x-ray"),
        "ok",
        check=wrote_images(1),
    ),
    Case(
        "sd_safety_checker_entry_diffusers_writes_is_allowed",
        lambda t: gen(
            edit_index(
                sd_base(t),
                lambda i: i.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"]),
            ),
            "--prompt",
            "a chest x-ray",
        ),
        "ok",
        check=wrote_images(1),
    ),
    Case(
        "pickle_only_weights_refused",
        lambda t: gen(ddpm(t / "m", stock=True, pickle=True)),
        names=("unet/diffusion_pytorch_model.bin", "pickle", "safetensors", "--allow_pickle"),
        absent=("out",),
    ),
    Case(
        "pickle_only_weights_load_with_allow_pickle",
        lambda t: gen(ddpm(t / "m", stock=True, pickle=True), "--allow_pickle"),
        "ok",
        check=wrote_images(1),
    ),
    Case(
        "pickle_text_encoder_of_sd_refused",
        _sd_pickle_text_encoder,
        names=("text_encoder/pytorch_model.bin", "--allow_pickle"),
        absent=("out",),
    ),
    Case(
        "library_not_allowed",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(unet=["os", "system"]))),
        names=("model_index.json", "'unet'", "library 'os' is not allowed", "diffusers"),
        absent=("out",),
    ),
    Case(
        "component_code_in_folder_never_runs",
        _component_code,
        names=("'unet'", "library 'evilmod' is not allowed"),
        absent=("out", MARKER),
    ),
    Case(
        "custom_pipeline_code_never_runs",
        _custom_pipeline_code,
        names=("model_index.json", "evilpipe.py", "pipeline_medsd"),
        absent=("out", MARKER),
    ),
    Case(
        "tampered_shim_in_working_directory_never_runs",
        _tampered_shim,
        "ok",
        check=both(wrote_images(1), no_marker),
        cwd="m",
    ),
    Case(
        "model_index_invalid_json",
        lambda t: gen(_write(ddpm(t / "m") / "model_index.json", '{"_class_name": ')),
        names=("model_index.json", "invalid JSON at line 1", "expected"),
        absent=("out",),
    ),
    Case(
        "model_index_not_an_object",
        lambda t: gen(_write(ddpm(t / "m") / "model_index.json", '["unet"]')),
        names=("model_index.json", "expected a JSON object"),
    ),
    Case(
        "model_index_class_name_wrong_type",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(_class_name=5))),
        names=("model_index.json", "'_class_name'", "got 5"),
    ),
    Case(
        "model_index_unsupported_class",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(_class_name="StableDiffusionXLPipeline"))),
        names=(
            "model_index.json",
            "unsupported pipeline class 'StableDiffusionXLPipeline'",
            "MedDDPMPipeline",
        ),
    ),
    Case(
        "model_index_component_wrong_type",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(unet="LightUNet2DModel"))),
        names=("model_index.json", "'unet'", "expected [library, class name]"),
    ),
    Case(
        "model_index_component_entry_missing",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.pop("scheduler"))),
        names=("model_index.json", "no 'scheduler' entry"),
    ),
    Case(
        "component_folder_missing",
        lambda t: gen(_drop(ddpm(t / "m"), "unet")),
        names=("'unet' component", "is missing"),
        absent=("out",),
    ),
    Case(
        "component_config_corrupt",
        lambda t: gen(_write(ddpm(t / "m") / "unet" / "config.json", "{not json").parent.parent),
        names=("unet/config.json", "invalid JSON at line 1, column 2"),
    ),
    Case(
        "intensity_mapping_wrong_type_in_config",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(intensity_mapping="HU"))),
        names=("model_index.json", "'intensity_mapping'", "expected null or an object", "'HU'"),
    ),
    Case(
        "intensity_mapping_unknown_type_in_config",
        lambda t: gen(edit_index(ddpm(t / "m"), lambda i: i.update(intensity_mapping={"type": "gamma"}))),
        names=("'intensity_mapping'", "'gamma'", "window"),
    ),
    Case(
        "intensity_mapping_high_below_low",
        lambda t: gen(
            edit_index(
                ddpm(t / "m"), lambda i: i.update(intensity_mapping={"type": "window", "low": 5, "high": 1})
            )
        ),
        names=("'intensity_mapping'", "expected high > low"),
    ),
    Case("empty_folder", lambda t: gen(_mkdir(t / "m")), names=("is an empty folder", "model_index.json")),
    Case(
        "checkpoint_folder_given_as_model",
        _checkpoint,
        names=("checkpoint-10", "is a training checkpoint", "run folder", "--resume_from_checkpoint"),
        absent=("out",),
    ),
    Case(
        "unfinished_run_folder",
        lambda t: _checkpoint(t, run_only=True),
        names=("holds training checkpoints but no finished model", "--resume_from_checkpoint latest"),
    ),
    Case(
        "image_folder_given_as_model",
        lambda t: gen(png(t / "imgs")),
        names=("is not a medsd model", "model_index.json", "pytorch_lora_weights.safetensors"),
    ),
    Case(
        "run_folder_with_model_inside",
        lambda t: gen(_parent(ddpm(t / "qs" / "pipeline"))),
        names=("is not a medsd model", "did you mean", "qs/pipeline"),
    ),
    Case(
        "model_is_a_file", lambda t: gen(_write(t / "m.txt", "x")), names=("m.txt is a file", "model folder")
    ),
    Case("model_does_not_exist", lambda t: gen(t / "nope" / "m"), names=("nope/m does not exist", "model")),
    Case(
        "lora_info_corrupt",
        lambda t: gen(lora(t / "l", info="{base_model"), "--prompt", "x"),
        names=("medsd_lora.json", "invalid JSON"),
    ),
    Case(
        "lora_base_model_missing",
        lambda t: gen(lora(t / "l"), "--prompt", "x"),
        names=("medsd_lora.json", "'base_model'", "/nonexistent/sd-base does not exist"),
    ),
    Case(
        "lora_pickle_weights",
        lambda t: gen(lora(t / "l", weights="pytorch_lora_weights.bin"), "--prompt", "x"),
        names=("pytorch_lora_weights.bin", "pickle LoRA weights", "pytorch_lora_weights.safetensors"),
    ),
    Case(
        "lora_folder_where_cddpm_pipeline_expected",
        lambda t: ["cddpm-eval", "--model", str(lora(t / "l")), "--out", "ev", "--device", "cpu"],
        names=("is a LoRA folder", "not a full MedCDDPMPipeline folder"),
        absent=("ev",),
    ),
    Case(
        "ddpm_folder_where_cddpm_expected",
        lambda t: ["cddpm-eval", "--model", str(ddpm(t / "m")), "--out", "ev", "--device", "cpu"],
        names=("a MedDDPMPipeline folder", "expected a MedCDDPMPipeline model"),
        absent=("ev",),
    ),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path.parent if path.name == "model_index.json" else path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _parent(path: Path) -> Path:
    return path.parent


# -- command-line input ----------------------------------------------------------------------------------------
def _sample(t: Path, *extra: str) -> list[str]:
    return ["sample", "--model", str(ddpm(t / "m")), "--out", "out", "--num_images", "1", *extra]


def _nonempty(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("mine")
    return path


def _tstr(t: Path, *extra: str) -> list[str]:
    return ["tstr", "--train_data", str(png(t / "data")), "--out", "tstr_out", *extra]


def _xray(t: Path, *extra: str, fake: str | None = None) -> list[str]:
    fake = fake if fake is not None else f"gen={png(t / 'fake')}"
    return [
        "xray-table",
        "--fake",
        fake,
        "--real",
        str(png(t / "real")),
        "--classes",
        "a,b",
        "--out",
        "xt",
        *extra,
    ]


def _score(t: Path, *extra: str) -> list[str]:
    key = _write(t / "key.csv", "case_id,stratum,truth,source\n1,all,real,x\n")
    ans = _write(t / "r1.csv", "case_id,stratum,answer,findings\n1,all,real,\n")
    return ["reader_study", "score", "--key", str(key), "--answers", str(ans), *extra]


CLI_CASES = [
    Case(
        "sample_batch_size_0",
        lambda t: _sample(t, "--batch_size", "0"),
        names=("--batch_size", ">= 1", "0"),
        absent=("out",),
    ),  # fmt: skip
    Case(
        "sample_num_inference_steps_0",
        lambda t: _sample(t, "--num_inference_steps", "0"),
        names=("--num_inference_steps", ">= 1"),
        absent=("out",),
    ),
    Case(
        "sample_negative_num_inference_steps",
        lambda t: _sample(t, "--num_inference_steps", "-3"),
        names=("--num_inference_steps", ">= 1", "-3"),
        absent=("out",),
    ),
    Case(
        "sample_batch_size_not_a_number",
        lambda t: _sample(t, "--batch_size", "many"),
        names=("--batch_size", "invalid int value", "'many'"),
    ),
    Case(
        "sample_device_cuda_without_gpu",
        lambda t: _sample(t, "--device", "cuda"),
        names=("--device cuda", "CUDA is not available", "--device cpu"),
        absent=("out",),
        needs_no_cuda=True,
    ),
    Case(
        "sample_device_nonsense",
        lambda t: _sample(t, "--device", "nonsense"),
        names=("--device 'nonsense'", "expected cpu, cuda"),
        absent=("out",),
    ),
    Case(
        "sample_loads",
        lambda t: _sample(t, "--num_inference_steps", "1", "--device", "cpu"),
        "ok",
        check=wrote_images(1),
    ),  # fmt: skip
    Case(
        "generate_out_not_empty",
        lambda t: ["generate", str(ddpm(t / "m")), "--out", str(_nonempty(t / "out")), *GEN],
        names=("--out", "is not empty", "--overwrite"),
        check=lambda t: (t / "out" / "keep.txt").read_text() == "mine",
    ),
    Case(
        "generate_flag_of_another_family",
        lambda t: gen(ddpm(t / "m"), "--height", "16"),
        names=("--height applies to text2xray models", "ddpm model"),
        absent=("out",),
    ),
    Case("generate_negative_seed", lambda t: gen(ddpm(t / "m"), "--seed", "-1"), names=("--seed", ">= 0")),
    Case(
        "generate_negative_guidance_scale",
        lambda t: gen(ddpm(t / "m"), "--guidance_scale", "-2"),
        names=("--guidance_scale", ">= 0"),
    ),
    Case(
        "generate_missing_sidecar",
        lambda t: ["generate", "--from_sidecar", str(t / "gone.json"), "--out", "out", "--device", "cpu"],
        names=("--from_sidecar", "gone.json does not exist"),
        absent=("out",),
    ),
    Case(
        "eval_k_0",
        lambda t: [
            "eval",
            "--real",
            str(png(t / "r")),
            "--fake",
            str(png(t / "f")),
            "--out",
            "ev",
            "--k",
            "0",
        ],
        names=("--k", ">= 1"),
        absent=("ev",),
    ),
    Case(
        "eval_copy_threshold_out_of_range",
        lambda t: ["eval", "--real", "r", "--fake", "f", "--out", "ev", "--copy_threshold", "1.5"],
        names=("--copy_threshold", "in [0, 1]"),
    ),
    Case(
        "eval_missing_inception_weights",
        lambda t: ["eval", "--real", "r", "--fake", "f", "--out", "ev", "--inception_weights", "nope.pth"],
        names=("--inception_weights", "nope.pth does not exist"),
        absent=("ev",),
    ),
    Case(
        "cddpm_eval_num_samples_0",
        lambda t: ["cddpm-eval", "--model", str(cddpm(t / "m")), "--out", "ev", "--num_samples", "0"],
        names=("--num_samples", ">= 1"),
        absent=("ev",),
    ),
    Case(
        "cddpm_eval_bad_factor",
        lambda t: [
            "cddpm-eval",
            "--model",
            str(cddpm(t / "m")),
            "--out",
            "ev",
            "--factor",
            "two",
            "--device",
            "cpu",
        ],
        names=("--factor", "numbers > 1", "'two'"),
        absent=("ev",),
    ),
    Case(
        "cddpm_eval_refuses_earlier_results",
        lambda t: [
            "cddpm-eval",
            "--model",
            "m",
            "--out",
            str(_write(_mkdir(t / "ev") / "metrics.json", "{}").parent),
        ],
        names=("--out", "already holds metrics.json", "--overwrite"),
        check=lambda t: (t / "ev" / "metrics.json").read_text() == "{}",
    ),
    Case(
        "push_checkpoint_folder",
        lambda t: ["push", str(checkpoint(t)), "--repo_id", "me/model", "--token", "hf_x"],
        names=("is a training checkpoint",),
    ),
    Case(
        "push_pickle_only_model",
        lambda t: ["push", str(ddpm(t / "m", stock=True, pickle=True)), "--repo_id", "me/model"],
        names=("diffusion_pytorch_model.bin", "pickle", "--allow_pickle"),
    ),
    Case(
        "quickstart_max_train_steps_0",
        lambda t: ["quickstart", "--output_dir", "qs", "--max_train_steps", "0"],
        names=("--max_train_steps", ">= 1"),
        absent=("qs",),
    ),
    Case(
        "quickstart_resolution_negative",
        lambda t: ["quickstart", "--output_dir", "qs", "--resolution", "-32"],
        names=("--resolution", ">= 8"),
        absent=("qs",),
    ),
    Case(
        "quickstart_fewer_images_than_a_batch",
        lambda t: ["quickstart", "--output_dir", "qs", "--num_images", "8", "--train_batch_size", "32"],
        names=("--num_images 8", "--train_batch_size (32)"),
        absent=("qs",),
    ),
    Case(
        "train_unknown_flag",
        lambda t: ["train", "ddpm", "--learning_rte", "0.1"],
        names=("medsd train ddpm", "unrecognized arguments: --learning_rte"),
    ),
    Case(
        "tstr_learning_rate_0",
        lambda t: _tstr(t, "--learning_rate", "0"),
        names=("--learning_rate", "> 0"),
        absent=("tstr_out",),
    ),  # fmt: skip
    Case(
        "tstr_unknown_mixed_precision",
        lambda t: _tstr(t, "--mixed_precision", "fp8"),
        names=("--mixed_precision", "invalid choice", "'fp8'"),
    ),
    Case(
        "tstr_one_class",
        lambda t: _tstr(t, "--classes", "Pneumonia"),
        names=("--classes", "at least two labels"),
        absent=("tstr_out",),
    ),
    Case(
        "ablation_yaml_syntax_error",
        lambda t: ["ablation", "--config", yaml_file(t, "resolution: 16\nmodel: [light-tiny\n")],
        names=("c.yaml", "YAML syntax error at line 3, column 1"),
    ),
    Case(
        "ablation_yaml_unknown_key",
        lambda t: ["ablation", "--config", yaml_file(t, "max_train_step: 5\n")],
        names=("c.yaml", "unknown field 'max_train_step'", "did you mean 'max_train_steps'"),
    ),
    Case(
        "ablation_yaml_wrong_type",
        lambda t: ["ablation", "--config", yaml_file(t, "max_train_steps: lots\n")],
        names=("c.yaml", "max_train_steps", "expected an integer", "'lots'"),
    ),
    Case(
        "ablation_yaml_out_of_range",
        lambda t: ["ablation", "--config", yaml_file(t, "seeds: 0\n"), "--out", "ab"],
        names=("--seeds", ">= 1"),
        absent=("ab",),
    ),
    Case(
        "train_ddpm_beta_schedule_nope",
        lambda t: ["train", "ddpm", "--output_dir", str(t / "run"), "--beta_schedule", "nope"],
        names=("--beta_schedule: expected one of", "squaredcos_cap_v2", "got 'nope'"),
        absent=("run",),
    ),
    Case(
        "train_ddpm_crop_middle",
        lambda t: ["train", "ddpm", "--output_dir", str(t / "run"), "--crop", "middle"],
        names=("--crop: expected one of", "center / random", "got 'middle'"),
        absent=("run",),
    ),
    Case(
        "train_ddpm_prediction_type_noise",
        lambda t: ["train", "ddpm", "--output_dir", str(t / "run"), "--prediction_type", "noise"],
        names=("--prediction_type: expected one of", "v_prediction", "got 'noise'"),
        absent=("run",),
    ),
    Case(
        "train_cddpm_intensity_log",
        lambda t: ["train", "cddpm", "--output_dir", str(t / "run"), "--intensity", "log"],
        names=("--intensity: expected one of", "percentile", "got 'log'"),
        absent=("run",),
    ),
    Case(
        "train_ddpm_lr_scheduler_step",
        lambda t: ["train", "ddpm", "--output_dir", str(t / "run"), "--lr_scheduler", "step"],
        names=("--lr_scheduler: expected one of", "cosine", "got 'step'"),
        absent=("run",),
    ),
    Case(
        "train_sd-lora_split_training",
        lambda t: ["train", "sd-lora", "--output_dir", str(t / "run"), "--split", "training"],
        names=("--split: expected one of", "all", "got 'training'"),
        absent=("run",),
    ),
    Case(
        "train_cddpm_model_big-unet",
        lambda t: ["train", "cddpm", "--output_dir", str(t / "run"), "--model", "big-unet"],
        names=("--model: expected one of", "light-tiny", "got 'big-unet'"),
        absent=("run",),
    ),
    Case(
        "train_yaml_syntax_error",
        lambda t: ["train", "ddpm", "--config", yaml_file(t, "output_dir: run\n  seed: 3\n")],
        names=("c.yaml", "YAML syntax error at line 2"),
    ),
    Case(
        "train_yaml_unknown_key",
        lambda t: ["train", "ddpm", "--config", yaml_file(t, "learnig_rate: 0.001\n")],
        names=("c.yaml", "unknown field 'learnig_rate'", "did you mean 'learning_rate'"),
    ),
    Case(
        "train_yaml_wrong_type",
        lambda t: ["train", "ddpm", "--config", yaml_file(t, "train_batch_size: [4, 8]\n")],
        names=("c.yaml", "train_batch_size", "expected an integer"),
    ),
    Case(
        "train_yaml_bool_for_a_number",
        lambda t: ["train", "ddpm", "--config", yaml_file(t, "max_train_steps: true\n")],
        names=("c.yaml", "max_train_steps", "expected an integer", "True"),
    ),
    Case(
        "train_config_missing",
        lambda t: ["train", "ddpm", "--config", str(t / "none.yaml")],
        names=("--config", "none.yaml does not exist", "YAML"),
    ),
    Case(
        "xray_table_fake_without_name",
        lambda t: _xray(t, fake=str(t / "fake")),
        names=("--fake", "expected NAME=SOURCE"),
        absent=("xt",),
    ),
    Case(
        "xray_table_missing_fake_source",
        lambda t: _xray(t, fake=f"gen={t / 'gone'}"),
        names=("--fake", "gone does not exist"),
        absent=("xt",),
    ),
    Case("xray_table_size_0", lambda t: _xray(t, "--size", "0"), names=("--size", ">= 8"), absent=("xt",)),
    Case(
        "reader_study_export_n_0",
        lambda t: [
            "reader_study",
            "export",
            "--fake",
            str(png(t / "f")),
            "--real",
            str(png(t / "r")),
            "--out",
            "st",
            "--n",
            "0",
        ],
        names=("--n", ">= 1"),
        absent=("st",),
    ),  # fmt: skip
    Case(
        "reader_study_score_missing_key",
        lambda t: ["reader_study", "score", "--key", str(t / "key.csv"), "--answers", str(t / "a.csv")],
        names=("--key", "key.csv does not exist"),
    ),
    Case(
        "reader_study_score_refuses_existing_out",
        lambda t: _score(t, "--out", str(_write(t / "scores.json", "{}"))),
        names=("--out", "scores.json already exists", "--overwrite"),
        check=lambda t: (t / "scores.json").read_text() == "{}",
    ),
]

CASES = MODEL_CASES + CLI_CASES


def run_case(case: Case, tmp_path, monkeypatch, capsys) -> None:
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    argv = [str(a) for a in case.build(tmp_path)]
    if case.cwd:
        monkeypatch.chdir(tmp_path / case.cwd)
        monkeypatch.syspath_prepend(str(tmp_path / case.cwd))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    if case.expect == "ok":
        assert code == 0, err[-2000:]
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code not in (0, None), err
        assert len(lines) == 1, err
        assert "Traceback" not in err and lines[0].startswith("medsd")
        for name in case.names:
            assert name in lines[0], f"{name!r} not in: {lines[0]}"
    for path in case.absent:
        assert not (tmp_path / path).exists(), f"{path} was created"
    if case.check:
        case.check(tmp_path)
    assert "pipeline_medsd" not in sys.modules and "evilpipe" not in sys.modules
