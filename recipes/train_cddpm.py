"""Image-conditioned DDPM (Med-cDiff, Hung et al.) for super-resolution, denoising or inpainting.

    accelerate launch recipes/train_cddpm.py --config recipes/configs/cddpm_sr_x4.yaml \
        --train_data /data/cxr/metadata.csv --patient_column patient_id --output_dir outputs/cddpm-sr-x4

    python recipes/train_cddpm.py --config recipes/configs/cddpm_cpu.yaml --task inpaint   # small CPU run

Every flag is a field of ``medsd.training.cddpm.CDDPMTrainConfig`` (``--help`` lists them; ``--config`` reads a
YAML file from recipes/configs, flags override it). Same as ``medsd train cddpm``. See docs/cddpm.md.
"""

from __future__ import annotations

import sys

from medsd.training.cddpm import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
