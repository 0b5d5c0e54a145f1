#!/usr/bin/env bash
# The GPU run of benchmarks/compare.py, as one command for a session that is lent a GPU:
#
#   bash benchmarks/gpu_run.sh [OUT_DIR]            # default OUT_DIR: outputs/bench-compare-gpu
#
# It needs the NIH images for the stock data path; ../shared does not travel to a device machine, so
# copy a few hundred of them into an ignored folder first and name that folder in the device tool's
# `carry` (about 60 MiB for 512 PNGs at 1024 px: resize them to 256 px to stay under the limit):
#
#   python - <<'PY'
#   from pathlib import Path; from PIL import Image
#   out = Path("outputs/nih_256"); out.mkdir(parents=True, exist_ok=True)
#   for p in sorted(Path("../shared/data/nih_cxr14").glob("*.png"))[:512]:
#       Image.open(p).convert("L").resize((256, 256), Image.BILINEAR).save(out / p.name)
#   PY
#
# then, on the device: bash benchmarks/gpu_run.sh outputs/bench-compare-gpu outputs/nih_256
# Sizes are the issue's H100 settings (SIZES["cuda"] in compare.py): UNet2DModel of
# train_unconditional.py at 128 px batch 32, light-ct, SD v1.5-sized LoRA at 512 px batch 8,
# sampling batch 64. Time: about 6-8 minutes on one H100/H200.
set -euo pipefail
OUT="${1:-outputs/bench-compare-gpu}"
DATA="${2:-}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_ARG=()
if [ -n "$DATA" ]; then DATA_ARG=(--data "$DATA"); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python benchmarks/compare.py --device cuda --out "$OUT" "${DATA_ARG[@]}" \
    --workloads ddpm_unet2d,ddpm_light,cddpm,sd_lora,sample_ddpm,sample_cddpm,sample_sd,fast_vs_ddpm1000
# the torch.compile + channels_last lever, DDPM only
python benchmarks/compare.py --device cuda --out "$OUT/compile" "${DATA_ARG[@]}" \
    --workloads ddpm_unet2d --compile --channels_last
