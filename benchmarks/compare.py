"""Side-by-side speed benchmark: stock diffusers, as its examples run it, against medsd's own code.

One process, one device. Each workload runs the stock reference (written the way diffusers' examples
write it: ``datasets`` imagefolder + torchvision transforms + ``DataLoader`` from image files, their
loop and numerics) and medsd's training / sampling code, with the same model, resolution, batch and
steps, interleaved round by round (stock, medsd, stock, medsd, ...) so that a busy machine slows both.
It prints a table and writes ``compare.json``:

    python benchmarks/compare.py --device cpu --out outputs/bench-compare
    python benchmarks/compare.py --device cpu --smoke --out /tmp/bench-smoke       # CI-sized
    python benchmarks/compare.py --device cuda --out outputs/bench-compare-gpu      # benchmarks/gpu_run.sh

Figures per side: median ms/step and img/s, peak memory (CUDA: ``max_memory_allocated``; CPU: the
process's peak resident memory during that side's rounds), MFU (FLOPs of one step counted with
``torch.utils.flop_counter`` against a matmul peak measured here in the precision used), the share
of the step the device computes (1 - time spent waiting for the batch / step time) and the training
loss over the last half of the steps (mean over rounds +- its spread), with the ratio medsd/stock.
No downloads: models are built from configs with random weights.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/compare.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

WORKLOADS = (
    "ddpm_unet2d",
    "ddpm_light",
    "cddpm",
    "sd_lora",
    "sample_ddpm",
    "sample_cddpm",
    "sample_sd",
    "fast_vs_ddpm1000",
)
OPTIONAL_WORKLOADS: tuple[str, ...] = ()
NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih_cxr14"

# Sizes per platform. "cpu" is this 2-core machine (the reference setting: 64 px, batch 16, the
# 32-64-128 UNet2DModel with attention at the lowest level); "cuda" is the H100 reference setting.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        resolution=64,
        batch=16,
        steps=8,
        warmup=2,
        rounds=3,
        num_images=256,
        unet="diffusers-small",
        light="light-tiny",
        cddpm_model="light-tiny",
        sd_size="tiny",
        sd_resolution=32,
        sd_batch=8,
        sample_batch=16,
        sample_steps=20,
        sample_rounds=3,
        sd_sample_steps=20,
        fast_batch=4,
    ),
    "smoke": dict(
        resolution=16,
        batch=4,
        steps=3,
        warmup=1,
        rounds=1,
        num_images=8,
        unet="diffusers-small",
        light="light-tiny",
        cddpm_model="light-tiny",
        sd_size="tiny",
        sd_resolution=32,
        sd_batch=2,
        sample_batch=2,
        sample_steps=3,
        sample_rounds=1,
        sd_sample_steps=2,
        fast_batch=1,
        ddpm_reference_steps=50,
    ),
    "cuda": dict(
        resolution=128,
        batch=32,
        steps=60,
        warmup=10,
        rounds=3,
        num_images=512,
        unet="diffusers-unconditional",
        light="light-ct",
        cddpm_model="light-ct",
        sd_size="sd-v1.5",
        sd_resolution=512,
        sd_batch=8,
        sample_batch=64,
        sample_steps=50,
        sample_rounds=3,
        sd_sample_steps=25,
        fast_batch=64,
    ),
}


# -- measurement helpers ------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory while the block runs: CUDA ``max_memory_allocated``, else sampled resident memory."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Measured dense matmul FLOP/s (best of a few square products) in ``dtype``."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for i in range(4 if device.type == "cpu" else 12):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (forward and backward when ``fn`` does both)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def summarise_training(
    rounds: list[dict[str, list[float]]],
    batch: int,
    warmup: int,
    flops: float,
    peak: float,
    memory: int,
    precision: str,
) -> dict[str, Any]:
    """ms/step, img/s, MFU, busy share and loss (last half of the steps) from per-round records."""
    steps = [s for r in rounds for s in r["step_s"][warmup:]]
    waits = [w for r in rounds for w in r["data_s"][warmup:]]
    step = _median(steps)
    wait = _median(waits) if waits else 0.0
    tails = []
    for r in rounds:
        losses = r["loss"]
        tail = losses[len(losses) // 2 :] or losses
        tails.append(sum(tail) / len(tail))
    loss = sum(tails) / len(tails)
    # standard error of the tail mean: the per-step loss varies with the sampled timesteps
    last = [x for r in rounds for x in r["loss"][len(r["loss"]) // 2 :]]
    spread = statistics.stdev(last) / math.sqrt(len(last)) if len(last) > 1 else 0.0
    return {
        "ms_step": 1e3 * step,
        "img_s": batch / step,
        "peak_mem_gib": memory / 2**30,
        "mfu": flops / step / peak,
        "busy": max(0.0, 1.0 - wait / step),
        "loss": loss,
        "loss_spread": spread,
        "loss_first": sum(r["loss"][0] for r in rounds) / len(rounds),
        "precision": precision,
        "steps_timed": len(steps),
    }


def summarise_sampling(
    seconds: list[float], images: int, flops: float, peak: float, memory: int, precision: str
) -> dict[str, Any]:
    t = _median(seconds)
    return {
        "ms_step": float("nan"),
        "img_s": images / t,
        "s_batch": t,
        "peak_mem_gib": memory / 2**30,
        "mfu": flops / t / peak,
        "busy": 1.0,
        "precision": precision,
    }


def _reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so a second in-process run may use another precision:
    what accelerate's own ``AccelerateTestCase`` does after each test."""
    from accelerate.test_utils.testing import AccelerateTestCase

    AccelerateTestCase().tearDown()


# -- data ---------------------------------------------------------------------------------------------


def prepare_images(work: Path, num_images: int, resolution: int, data: str | None) -> tuple[Path, str]:
    """A folder of ``num_images`` PNG files: links to NIH chest X-rays when present, else phantoms."""
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(data) if data else NIH
    if data != "phantom" and source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".png")[:num_images]
        if len(files) >= num_images:
            for p in files:
                (folder / p.name).symlink_to(p.resolve())
            return folder, str(source)
    from medsd.data.phantoms import chest_phantom
    from medsd.data.writers import write_png8

    for i in range(num_images):
        write_png8(folder / f"phantom_{i:05d}.png", chest_phantom(max(2 * resolution, 64), seed=i))
    return folder, "phantom"


def captioned_folder(images: Path, work: Path, caption: str = "a chest x-ray") -> Path:
    """The same images with a ``metadata.csv`` (file_name, text): the layout of diffusers' text examples."""
    folder = work / "captioned"
    folder.mkdir(exist_ok=True)
    rows = ["file_name,text"]
    for p in sorted(images.iterdir()):
        (folder / p.name).symlink_to(p.resolve())
        rows.append(f"{p.name},{caption}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


# -- stock references ---------------------------------------------------------------------------------
# Written the way examples/unconditional_image_generation/train_unconditional.py and
# examples/text_to_image/train_text_to_image_lora.py do it (their README's recipe: --center_crop
# --random_flip --use_ema --learning_rate 1e-4, AdamW betas 0.95/0.999, weight decay 1e-6, cosine
# schedule). The one change: images are read as 1-channel ("L") because the models are 1-channel.


def stock_image_dataloader(folder: Path, resolution: int, batch: int, cache_dir: Path, rgb: bool = False):
    from datasets import load_dataset
    from torchvision import transforms

    dataset = load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache_dir), split="train")
    augmentations = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )

    def transform_images(examples: dict[str, Any]) -> dict[str, Any]:
        mode = "RGB" if rgb else "L"
        return {"input": [augmentations(image.convert(mode)) for image in examples["image"]]}

    dataset.set_transform(transform_images)
    return dataset, torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)


def stock_train_unconditional(
    model: torch.nn.Module,
    folder: Path,
    cfg: dict[str, Any],
    mixed_precision: str,
    work: Path,
    num_train_timesteps: int = 1000,
    condition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """The train_unconditional.py loop for ``cfg['steps']`` steps; per-step times, batch waits, losses.

    With ``condition`` the U-Net also sees ``condition(clean)`` concatenated to its input: the
    conditional (cDDPM) variant of the same loop.
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    _reset_accelerate()
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision=mixed_precision)
    ema_model = EMAModel(
        model.parameters(),
        decay=0.9999,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=0.75,
        model_cls=type(model),
        model_config=model.config,
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule="linear", prediction_type="epsilon"
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    _, train_dataloader = stock_image_dataloader(folder, cfg["resolution"], cfg["batch"], work / "hf-cache")
    steps = cfg["steps"]
    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=cfg["lr_warmup"], num_training_steps=steps
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    ema_model.to(accelerator.device)
    device = accelerator.device
    record: dict[str, list[float]] = {"step_s": [], "data_s": [], "loss": []}
    global_step = 0
    while global_step < steps:
        model.train()
        it = iter(train_dataloader)
        while global_step < steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            clean_images = batch["input"].to(weight_dtype)
            noise = torch.randn(clean_images.shape, dtype=weight_dtype, device=clean_images.device)
            bsz = clean_images.shape[0]
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
            ).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            if condition is not None:
                noisy_images = torch.cat([noisy_images, condition(clean_images)], dim=1)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema_model.step(model.parameters())
                global_step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "step": global_step}
            sync(device)
            t2 = time.perf_counter()
            record["step_s"].append(t2 - t0)
            record["data_s"].append(t1 - t0)
            record["loss"].append(logs["loss"])
    accelerator.end_training()
    _reset_accelerate()
    return record


def sr_condition(factor: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x4 super-resolution condition: area-downsampled then bicubic-upsampled (the cDDPM paper's)."""

    def cond(clean: torch.Tensor) -> torch.Tensor:
        size = clean.shape[-2:]
        low = F.interpolate(clean.float(), scale_factor=1 / factor, mode="area")
        return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1).to(clean.dtype)

    return cond


def stock_train_text_to_image_lora(
    base: Path, folder: Path, cfg: dict[str, Any], mixed_precision: str, work: Path
) -> dict[str, list[float]]:
    """The train_text_to_image_lora.py loop (U-Net attention LoRA rank 4, frozen VAE and CLIP)."""
    from accelerate import Accelerator
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    _reset_accelerate()
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision=mixed_precision)
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    torch.manual_seed(cfg["seed"])
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    if mixed_precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    dataset = load_dataset(
        "imagefolder", data_dir=str(folder), cache_dir=str(work / "hf-cache"), split="train"
    )
    res = cfg["sd_resolution"]
    train_transforms = transforms.Compose(
        [
            transforms.Resize(res, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(res),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )

    def preprocess_train(examples: dict[str, Any]) -> dict[str, Any]:
        examples["pixel_values"] = [train_transforms(image.convert("RGB")) for image in examples["image"]]
        examples["input_ids"] = tokenizer(
            examples["text"],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return examples

    def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values = (
            torch.stack([e["pixel_values"] for e in examples])
            .to(memory_format=torch.contiguous_format)
            .float()
        )
        return {"pixel_values": pixel_values, "input_ids": torch.stack([e["input_ids"] for e in examples])}

    train_dataset = dataset.with_transform(preprocess_train)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, shuffle=True, collate_fn=collate_fn, batch_size=cfg["sd_batch"], num_workers=0
    )
    lr_scheduler = get_scheduler(
        "constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=cfg["steps"]
    )
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )
    device = accelerator.device
    record: dict[str, list[float]] = {"step_s": [], "data_s": [], "loss": []}
    global_step = 0
    while global_step < cfg["steps"]:
        unet.train()
        it = iter(train_dataloader)
        while global_step < cfg["steps"]:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
                ).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
            value = loss.detach().item()
            sync(device)
            t2 = time.perf_counter()
            record["step_s"].append(t2 - t0)
            record["data_s"].append(t1 - t0)
            record["loss"].append(value)
    accelerator.end_training()
    _reset_accelerate()
    return record


# -- medsd sides --------------------------------------------------------------------------------------


class TimedBatches:
    """Wraps a ``get_batch`` dataset and records how long each batch took to produce."""

    def __init__(self, dataset: Any, waits: list[float]):
        self.dataset, self.waits = dataset, waits

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device: Any) -> TimedBatches:
        if hasattr(self.dataset, "to"):
            self.dataset = self.dataset.to(device)
        return self

    def get_batch(self, indices: Any, device: Any = None) -> dict:
        t0 = time.perf_counter()
        batch = self.dataset.get_batch(indices, device)
        self.waits.append(time.perf_counter() - t0)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


def common_train_settings(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    return dict(
        output_dir=str(work / f"medsd-{name}"),
        overwrite_output_dir=True,
        seed=cfg["seed"],
        max_train_steps=cfg["steps"],
        logging_steps=1,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        progress_bar=False,
        mixed_precision=cfg["medsd_precision"],
        channels_last=cfg["channels_last"],
        torch_compile=cfg["compile"],
    )


def medsd_train(task_cls: type, config: Any) -> dict[str, list[float]]:
    """Run medsd's training core on ``task_cls(config)``; per-step times, batch waits and losses."""
    from medsd.training.core import train

    waits: list[float] = []

    class Timed(task_cls):  # type: ignore[misc, valid-type]
        def train_dataset(self) -> Any:
            ds = super().train_dataset()
            return TimedBatches(ds, waits) if hasattr(ds, "get_batch") else ds

    _reset_accelerate()
    try:
        torch.manual_seed(config.seed)
        task = Timed(config)
        result = train(task, config)
    finally:
        _reset_accelerate()
    times = [0.0] + [t for _, t in result.log_times]
    step_s = [b - a for a, b in zip(times, times[1:])]
    losses = [loss for _, loss in result.loss_history]
    return {"step_s": step_s, "data_s": waits[: len(step_s)], "loss": losses}


def ddpm_config(cfg: dict[str, Any], folder: Path, work: Path, model: str):
    from medsd.training.ddpm import DDPMTrainConfig

    return DDPMTrainConfig(
        train_data=str(folder),
        model=model,
        resolution=cfg["resolution"],
        train_batch_size=cfg["batch"],
        learning_rate=1e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=cfg["lr_warmup"],
        adam_beta1=0.95,
        adam_weight_decay=1e-6,
        use_ema=True,
        random_flip=True,
        split="all",  # every image, as the stock loop reads them
        num_validation_images=1,
        validation_inference_steps=1,
        **common_train_settings(cfg, work, model),
    )


def _precision_name(accelerator_value: str | None) -> str:
    return accelerator_value or "no"


def run_training_workload(
    name: str,
    cfg: dict[str, Any],
    stock_round: Callable[[], dict[str, list[float]]],
    medsd_round: Callable[[], dict[str, list[float]]],
    flops: float,
    batch: int,
    device: torch.device,
    peaks: dict[str, float],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Interleave ``rounds`` stock and medsd runs; summarise each side."""
    from medsd.training.precision import resolve_mixed_precision

    stock_rounds, medsd_rounds = [], []
    stock_mem = medsd_mem = 0
    for r in range(cfg["rounds"]):
        for side, fn, store in (("stock", stock_round, stock_rounds), ("medsd", medsd_round, medsd_rounds)):
            gc.collect()
            with PeakMemory(device) as mem:
                store.append(fn())
            if side == "stock":
                stock_mem = max(stock_mem, mem.peak)
            else:
                medsd_mem = max(medsd_mem, mem.peak)
            log(
                f"  {name} round {r + 1} {side}: median {1e3 * _median(store[-1]['step_s'][cfg['warmup'] :]):.0f} ms/step"
            )
    medsd_prec = _precision_name(resolve_mixed_precision(cfg["medsd_precision"]))
    stock = summarise_training(
        stock_rounds,
        batch,
        cfg["warmup"],
        flops,
        peaks[cfg["stock_precision"]],
        stock_mem,
        cfg["stock_precision"],
    )
    medsd = summarise_training(
        medsd_rounds, batch, cfg["warmup"], flops, peaks[medsd_prec], medsd_mem, medsd_prec
    )
    return finish(name, stock, medsd, "img_s")


def finish(name: str, stock: dict[str, Any], medsd: dict[str, Any], key: str) -> dict[str, Any]:
    out = {"workload": name, "stock": stock, "medsd": medsd, "ratio": medsd[key] / stock[key]}
    if "loss" in stock:
        noise = math.sqrt(stock["loss_spread"] ** 2 + medsd["loss_spread"] ** 2)
        out["loss_diff"] = medsd["loss"] - stock["loss"]
        out["loss_noise"] = noise
    return out


def training_flops(
    model: torch.nn.Module, batch: int, channels: int, resolution: int, cond: int = 0
) -> float:
    x = torch.randn(batch, channels + cond, resolution, resolution)
    t = torch.randint(0, 1000, (batch,))

    def step() -> None:
        out = model(x, t).sample
        F.mse_loss(out, x[:, :channels]).backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


# -- workloads ----------------------------------------------------------------------------------------


def workload_ddpm(name: str, preset: str, ctx: dict[str, Any]) -> dict[str, Any]:
    from medsd.models import build_unet

    cfg, device = ctx["cfg"], ctx["device"]
    res, batch = cfg["resolution"], cfg["batch"]

    def stock_round() -> dict[str, list[float]]:
        torch.manual_seed(cfg["seed"])
        model = build_unet(preset, sample_size=res)
        return stock_train_unconditional(model, ctx["images"], cfg, cfg["stock_precision"], ctx["work"])

    def medsd_round() -> dict[str, list[float]]:
        from medsd.training.ddpm import DDPMTask

        return medsd_train(DDPMTask, ddpm_config(cfg, ctx["images"], ctx["work"], preset))

    flops = training_flops(build_unet(preset, sample_size=res), batch, 1, res)
    out = run_training_workload(
        name, cfg, stock_round, medsd_round, flops, batch, device, ctx["peaks"], ctx["log"]
    )
    out["model"] = preset
    return out


def workload_cddpm(ctx: dict[str, Any]) -> dict[str, Any]:
    from medsd.models import build_unet
    from medsd.training.cddpm import CDDPMTask, CDDPMTrainConfig

    cfg, preset = ctx["cfg"], ctx["cfg"]["cddpm_model"]
    res, batch = cfg["resolution"], cfg["batch"]

    def stock_round() -> dict[str, list[float]]:
        torch.manual_seed(cfg["seed"])
        model = build_unet(preset, sample_size=res, in_channels=2, out_channels=1)
        return stock_train_unconditional(
            model, ctx["images"], cfg, cfg["stock_precision"], ctx["work"], 2000, condition=sr_condition(4)
        )

    def medsd_round() -> dict[str, list[float]]:
        config = CDDPMTrainConfig(
            train_data=str(ctx["images"]),
            task="sr",
            factor=4,
            model=preset,
            resolution=res,
            train_batch_size=batch,
            learning_rate=1e-4,
            lr_scheduler="cosine",
            lr_warmup_steps=cfg["lr_warmup"],
            adam_beta1=0.95,
            adam_weight_decay=1e-6,
            use_ema=True,
            random_flip=True,
            split="all",
            num_validation_images=1,
            validation_inference_steps=1,
            **common_train_settings(cfg, ctx["work"], "cddpm"),
        )
        return medsd_train(CDDPMTask, config)

    flops = training_flops(
        build_unet(preset, sample_size=res, in_channels=2, out_channels=1), batch, 1, res, cond=1
    )
    out = run_training_workload(
        "cddpm", cfg, stock_round, medsd_round, flops, batch, ctx["device"], ctx["peaks"], ctx["log"]
    )
    out["model"] = f"{preset} (sr x4)"
    return out


def sd_base(ctx: dict[str, Any]) -> Path:
    from medsd.pipelines.random_sd import save_random_sd_pipeline

    if "sd_base" not in ctx:
        ctx["sd_base"] = save_random_sd_pipeline(
            ctx["work"] / f"sd-{ctx['cfg']['sd_size']}", size=ctx["cfg"]["sd_size"]
        )
        ctx["sd_folder"] = captioned_folder(ctx["images"], ctx["work"])
    return ctx["sd_base"]


def workload_sd_lora(ctx: dict[str, Any]) -> dict[str, Any]:
    from medsd.training.sd_lora import SDLoRATask, SDLoRATrainConfig

    cfg = ctx["cfg"]
    base = sd_base(ctx)
    folder = ctx["sd_folder"]
    res, batch = cfg["sd_resolution"], cfg["sd_batch"]

    def stock_round() -> dict[str, list[float]]:
        return stock_train_text_to_image_lora(base, folder, cfg, cfg["stock_precision"], ctx["work"])

    def medsd_round() -> dict[str, list[float]]:
        config = SDLoRATrainConfig(
            pretrained_model_name_or_path=str(base),
            train_data_dir=str(folder),
            resolution=res,
            train_batch_size=batch,
            learning_rate=1e-4,
            random_flip=True,
            num_validation_images=0,
            **common_train_settings(cfg, ctx["work"], "sd-lora"),
        )
        return medsd_train(SDLoRATask, config)

    flops = sd_step_flops(base, batch, res)
    out = run_training_workload(
        "sd_lora", cfg, stock_round, medsd_round, flops, batch, ctx["device"], ctx["peaks"], ctx["log"]
    )
    out["model"] = f"random SD ({cfg['sd_size']}), LoRA r4, {res} px"
    return out


def sd_step_flops(base: Path, batch: int, res: int) -> float:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.unet.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    pixels = torch.randn(batch, 3, res, res)
    ids = torch.zeros(batch, pipe.tokenizer.model_max_length, dtype=torch.long)

    def step() -> None:
        with torch.no_grad():
            lat = pipe.vae.encode(pixels).latent_dist.sample()
            hidden = pipe.text_encoder(ids)[0]
        out = pipe.unet(lat, torch.zeros(batch, dtype=torch.long), hidden).sample
        out.float().pow(2).mean().backward()

    return count_flops(step)


def _time_calls(fn_a: Callable[[], Any], fn_b: Callable[[], Any], rounds: int, device: torch.device):
    """Interleaved timings of two callables (one untimed warm-up call each)."""
    ta, tb, mem_a, mem_b = [], [], 0, 0
    fn_a()
    fn_b()
    for _ in range(rounds):
        for fn, store, which in ((fn_a, ta, "a"), (fn_b, tb, "b")):
            gc.collect()
            with PeakMemory(device) as mem:
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                store.append(time.perf_counter() - t0)
            if which == "a":
                mem_a = max(mem_a, mem.peak)
            else:
                mem_b = max(mem_b, mem.peak)
    return ta, tb, mem_a, mem_b


def medsd_autocast_dtype(ctx: dict[str, Any]) -> torch.dtype | None:
    from medsd.training.precision import resolve_mixed_precision

    prec = resolve_mixed_precision(ctx["cfg"]["medsd_precision"])
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec or "no")


def _prec_of(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def workload_sample_ddpm(ctx: dict[str, Any]) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler

    from medsd.models import build_unet
    from medsd.pipelines.ddpm import MedDDPMPipeline

    cfg, device = ctx["cfg"], ctx["device"]
    torch.manual_seed(cfg["seed"])
    unet = build_unet(cfg["unet"], sample_size=cfg["resolution"]).to(device).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    stock = DDPMPipeline(unet=unet, scheduler=scheduler)
    med = MedDDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
    for p in (stock, med):
        p.set_progress_bar_config(disable=True)
    b, steps, dtype = cfg["sample_batch"], cfg["sample_steps"], medsd_autocast_dtype(ctx)

    def run_stock() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return stock(batch_size=b, num_inference_steps=steps, generator=g, output_type="np").images

    def run_medsd() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return med(
            batch_size=b, num_inference_steps=steps, generator=g, output_type="np", autocast_dtype=dtype
        ).images

    ta, tb, ma, mb = _time_calls(run_stock, run_medsd, cfg["sample_rounds"], device)
    flops = steps * count_flops(
        lambda: unet(torch.randn(b, 1, cfg["resolution"], cfg["resolution"], device=device), 10)
    )
    peaks = ctx["peaks"]
    out = finish(
        "sample_ddpm",
        summarise_sampling(ta, b, flops, peaks["no"], ma, "no"),
        summarise_sampling(tb, b, flops, peaks[_prec_of(dtype)], mb, _prec_of(dtype)),
        "img_s",
    )
    out["model"] = f"{cfg['unet']}, DDPM {steps} steps"
    return out


def workload_sample_cddpm(ctx: dict[str, Any]) -> dict[str, Any]:
    from medsd.models import build_unet
    from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler

    cfg, device = ctx["cfg"], ctx["device"]
    res, b, steps = cfg["resolution"], cfg["sample_batch"], cfg["sample_steps"]
    torch.manual_seed(cfg["seed"])
    unet = build_unet(cfg["cddpm_model"], sample_size=res, in_channels=2, out_channels=1).to(device).eval()
    scheduler = paper_scheduler(2000)
    med = MedCDDPMPipeline(unet=unet, scheduler=scheduler)
    med.medsd_metadata = {"family": "cddpm", "task": "sr", "factor": 4, "cond_channels": 1}
    med.set_progress_bar_config(disable=True)
    cond = sr_condition(4)(torch.rand(b, 1, res, res, device=device) * 2 - 1)
    stock_scheduler = type(scheduler).from_config(scheduler.config)
    dtype = medsd_autocast_dtype(ctx)

    @torch.no_grad()
    def run_stock() -> Any:
        # the DDPMPipeline loop with the condition concatenated to the U-Net input
        g = torch.Generator(device="cpu").manual_seed(0)
        image = torch.randn(cond.shape, generator=g).to(device)
        stock_scheduler.set_timesteps(steps)
        for t in stock_scheduler.timesteps:
            model_output = unet(torch.cat([image, cond], dim=1), t).sample
            image = stock_scheduler.step(model_output, t, image, generator=g).prev_sample
        return (image / 2 + 0.5).clamp(0, 1).cpu().numpy()

    def run_medsd() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return med(
            image=cond,
            num_inference_steps=steps,
            generator=g,
            output_type="np",
            task="sr",
            autocast_dtype=dtype,
        ).images

    ta, tb, ma, mb = _time_calls(run_stock, run_medsd, cfg["sample_rounds"], device)
    flops = steps * count_flops(lambda: unet(torch.cat([cond, cond], dim=1), 10))
    peaks = ctx["peaks"]
    out = finish(
        "sample_cddpm",
        summarise_sampling(ta, b, flops, peaks["no"], ma, "no"),
        summarise_sampling(tb, b, flops, peaks[_prec_of(dtype)], mb, _prec_of(dtype)),
        "img_s",
    )
    out["model"] = f"{cfg['cddpm_model']} sr x4, DDPM {steps} steps"
    return out


def workload_sample_sd(ctx: dict[str, Any]) -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from medsd.pipelines.text2xray import TextToXRayPipeline

    cfg, device = ctx["cfg"], ctx["device"]
    base = sd_base(ctx)
    stock = StableDiffusionPipeline.from_pretrained(base, safety_checker=None).to(device)
    stock.scheduler = DPMSolverMultistepScheduler.from_config(stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    med = TextToXRayPipeline.from_pretrained(base, safety_checker=None).to(device)
    med.scheduler = DPMSolverMultistepScheduler.from_config(med.scheduler.config)
    med.set_progress_bar_config(disable=True)
    b, steps, res = min(cfg["sample_batch"], 4), cfg["sd_sample_steps"], cfg["sd_resolution"]
    prompts = ["a chest x-ray"] * b

    def run_stock() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return stock(
            prompts,
            num_inference_steps=steps,
            guidance_scale=4.0,
            height=res,
            width=res,
            generator=g,
            output_type="np",
        ).images

    def run_medsd() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return med(
            prompts,
            num_inference_steps=steps,
            guidance_scale=4.0,
            height=res,
            width=res,
            generator=g,
            output_type="np",
        ).images

    ta, tb, ma, mb = _time_calls(run_stock, run_medsd, cfg["sample_rounds"], device)
    lat = torch.randn(
        2 * b,
        stock.unet.config.in_channels,
        res // stock.vae_scale_factor,
        res // stock.vae_scale_factor,
        device=device,
    )
    hidden = torch.randn(
        2 * b, stock.tokenizer.model_max_length, stock.text_encoder.config.hidden_size, device=device
    )
    flops = steps * count_flops(lambda: stock.unet(lat, 10, hidden))
    peaks = ctx["peaks"]
    out = finish(
        "sample_sd",
        summarise_sampling(ta, b, flops, peaks["no"], ma, "no"),
        summarise_sampling(tb, b, flops, peaks["no"], mb, "no"),
        "img_s",
    )
    out["model"] = f"random SD ({cfg['sd_size']}), DPM-Solver++ {steps} steps, CFG 4"
    return out


def workload_fast_vs_ddpm1000(ctx: dict[str, Any]) -> dict[str, Any]:
    """medsd's default sampler (SDE-DPM-Solver++ 25 steps) against stock DDPMPipeline with 1000 steps.

    Equal quality is measured by ``benchmarks/fast_sampler.py`` on trained models (radiomics FD 0.90x
    DDPM-1000's at 128 px CT, 0/48 degenerate); here the same U-Net runs both, for the speed.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    from medsd.models import build_unet
    from medsd.pipelines.ddpm import DEFAULT_FAST_STEPS, MedDDPMPipeline, fast_scheduler

    cfg, device = ctx["cfg"], ctx["device"]
    torch.manual_seed(cfg["seed"])
    unet = build_unet(cfg["light"], sample_size=cfg["resolution"]).to(device).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    stock = DDPMPipeline(unet=unet, scheduler=scheduler)
    med = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(scheduler.config))
    for p in (stock, med):
        p.set_progress_bar_config(disable=True)
    b, dtype = cfg["fast_batch"], medsd_autocast_dtype(ctx)
    ref_steps = cfg.get("ddpm_reference_steps", 1000)

    def run_stock() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return stock(batch_size=b, num_inference_steps=ref_steps, generator=g, output_type="np").images

    def run_medsd() -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return med(batch_size=b, generator=g, output_type="np", autocast_dtype=dtype).images

    ta, tb, ma, mb = _time_calls(run_stock, run_medsd, 1, device)
    one = count_flops(
        lambda: unet(torch.randn(b, 1, cfg["resolution"], cfg["resolution"], device=device), 10)
    )
    peaks = ctx["peaks"]
    out = finish(
        "fast_vs_ddpm1000",
        summarise_sampling(ta, b, ref_steps * one, peaks["no"], ma, "no"),
        summarise_sampling(tb, b, DEFAULT_FAST_STEPS * one, peaks[_prec_of(dtype)], mb, _prec_of(dtype)),
        "img_s",
    )
    out["model"] = f"{cfg['light']}, DDPM-{ref_steps} vs medsd {DEFAULT_FAST_STEPS}-step default"
    out["quality"] = "fast_sampler.py: radiomics FD 0.90x DDPM-1000 (128 px CT, 48 images), 0/48 degenerate"
    return out


# -- main ---------------------------------------------------------------------------------------------


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    import accelerate
    import diffusers

    from medsd.training.precision import cpu_has_native_bf16

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def format_table(results: list[dict[str, Any]]) -> str:
    head = "| workload | model | side | precision | ms/step | img/s | peak GiB | MFU | busy | loss (last half) | medsd/stock |"
    lines = [head, "|" + "---|" * 11]

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    for r in results:
        for side in ("stock", "medsd"):
            s = r[side]
            loss = f"{s['loss']:.4f} ± {s['loss_spread']:.4f}" if "loss" in s else "-"
            ratio = f"**{r['ratio']:.2f}x**" if side == "medsd" else ""
            ms = s["ms_step"] if not math.isnan(s["ms_step"]) else 1e3 * s.get("s_batch", float("nan"))
            lines.append(
                f"| {r['workload'] if side == 'stock' else ''} | {r['model'] if side == 'stock' else ''} | {side} | "
                f"{s['precision']} | {f(ms, '.0f')}{'' if 'loss' in s else ' (batch)'} | {f(s['img_s'], '.2f')} | "
                f"{f(s['peak_mem_gib'], '.2f')} | {f(100 * s['mfu'], '.1f')}% | {f(100 * s['busy'], '.0f')}% | {loss} | {ratio} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): checks that every workload runs")
    p.add_argument("--out", required=True, help="folder for compare.json and compare.md")
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {WORKLOADS + OPTIONAL_WORKLOADS}",
    )
    p.add_argument("--workload", default=None, help="one workload (e.g. sample_ddpm); overrides --workloads")
    p.add_argument(
        "--data",
        default=None,
        help="image folder for the data path (default: ../shared/data/nih_cxr14, else phantoms); 'phantom' forces phantoms",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="training steps per round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved stock/medsd rounds")
    p.add_argument("--warmup", type=int, default=None, help="steps per round left out of the step time")
    p.add_argument(
        "--lr_warmup", type=int, default=None, help="LR warm-up steps (both sides; default steps // 4)"
    )
    p.add_argument("--stock_precision", default="no", help="stock --mixed_precision (its default: no)")
    p.add_argument("--medsd_precision", default="auto", help="medsd --mixed_precision (its default: auto)")
    p.add_argument("--channels_last", action="store_true", help="medsd --channels_last (a lever)")
    p.add_argument("--compile", action="store_true", help="medsd --torch_compile (a lever)")
    p.add_argument("--seed", type=int, default=0)
    for k in (
        "resolution",
        "batch",
        "num_images",
        "sample_batch",
        "sample_steps",
        "sd_resolution",
        "sd_batch",
    ):
        p.add_argument(f"--{k}", type=int, default=None)
    p.add_argument("--unet", default=None, help="UNet2DModel preset of ddpm_unet2d / sample_ddpm")
    p.add_argument("--sd_size", default=None, help="random Stable Diffusion size: tiny or sd-v1.5")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    size = "smoke" if args.smoke else ("cuda" if device.type == "cuda" else "cpu")
    cfg = dict(SIZES[size])
    for k in (
        "steps",
        "rounds",
        "warmup",
        "resolution",
        "batch",
        "num_images",
        "sample_batch",
        "sample_steps",
        "unet",
        "sd_size",
        "sd_resolution",
        "sd_batch",
    ):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg.update(
        seed=args.seed,
        stock_precision=args.stock_precision,
        medsd_precision=args.medsd_precision,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    cfg["lr_warmup"] = args.lr_warmup if args.lr_warmup is not None else cfg["steps"] // 4
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    names = [args.workload] if args.workload else [w for w in args.workloads.split(",") if w]
    unknown = set(names) - set(WORKLOADS + OPTIONAL_WORKLOADS)
    if unknown:
        raise SystemExit(
            f"--workloads: unknown {sorted(unknown)}; choose from {WORKLOADS + OPTIONAL_WORKLOADS}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def log(msg: str) -> None:
        print(msg, flush=True)

    work = Path(tempfile.mkdtemp(prefix="medsd-compare-"))
    try:
        images, data_source = prepare_images(work, cfg["num_images"], cfg["resolution"], args.data)
        log(f"images: {cfg['num_images']} from {data_source}; device {device}, {threads} thread(s)")
        peaks = {
            "no": matmul_peak(device, torch.float32),
            "bf16": matmul_peak(device, torch.bfloat16),
        }
        peaks["fp16"] = matmul_peak(device, torch.float16) if device.type == "cuda" else peaks["no"]
        ctx = {
            "cfg": cfg,
            "device": device,
            "images": images,
            "work": work,
            "peaks": peaks,
            "log": log,
            "args": args,
        }
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "ddpm_unet2d": lambda: workload_ddpm("ddpm_unet2d", cfg["unet"], ctx),
            "ddpm_light": lambda: workload_ddpm("ddpm_light", cfg["light"], ctx),
            "cddpm": lambda: workload_cddpm(ctx),
            "sd_lora": lambda: workload_sd_lora(ctx),
            "sample_ddpm": lambda: workload_sample_ddpm(ctx),
            "sample_cddpm": lambda: workload_sample_cddpm(ctx),
            "sample_sd": lambda: workload_sample_sd(ctx),
            "fast_vs_ddpm1000": lambda: workload_fast_vs_ddpm1000(ctx),
        }
        results = []
        for name in names:
            log(f"{name} ...")
            t0 = time.perf_counter()
            r = runners[name]()
            r["seconds"] = time.perf_counter() - t0
            results.append(r)
            if "ratio" in r:
                log(f"{name}: medsd/stock {r['ratio']:.2f}x ({r['seconds']:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": size,
        "config": {k: v for k, v in cfg.items()},
        "data": data_source,
        "environment": environment(device, threads),
        "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "results": results,
    }
    table = format_table(results)
    (out / "compare.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "compare.md").write_text(table + "\n")
    print(table)
    return 0


with contextlib.suppress(Exception):  # quieter logs from the libraries
    import logging

    for _name in ("diffusers", "datasets", "accelerate"):
        logging.getLogger(_name).setLevel(logging.ERROR)

if __name__ == "__main__":
    raise SystemExit(main())
