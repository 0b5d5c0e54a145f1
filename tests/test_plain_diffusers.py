"""A saved medsd pipeline opens with plain diffusers in a fresh process (no prior medsd import)."""

from __future__ import annotations

import subprocess
import sys

import torch
from diffusers import DDPMScheduler

from medsd.models import LightUNet2DModel
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler


def test_fresh_process_loads_with_diffusers_only(tmp_path):
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4)
    pipe = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=50).config))
    pipe.save_pretrained(tmp_path)
    code = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "p.set_progress_bar_config(disable=True)\n"
        "x = p(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type='np').images\n"
        "print(type(p).__name__, x.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("MedDDPMPipeline (1, 8, 8)")
