"""LoRA fine-tuning of Stable Diffusion for text-to-X-ray generation (RoentGen-style).

    accelerate launch recipes/finetune_sd_xray.py \
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --train_data_dir /data/cxr --image_column filename --label_column label \
        --prompt_template "a chest x-ray, {label}" --resolution 512 --output_dir outputs/sd-lora-xray

Every flag is a field of ``medsd.training.sd_lora.SDLoRATrainConfig`` (``--help`` lists them; ``--config``
reads a YAML file such as recipes/configs/sd_lora_cxr.yaml). See docs/sd_lora.md.
"""

from __future__ import annotations

import sys

from medsd.training.sd_lora import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
