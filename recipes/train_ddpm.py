"""Train an unconditional 1-channel DDPM (lightweight U-Net or diffusers UNet2DModel).

    accelerate launch recipes/train_ddpm.py --config recipes/configs/ddpm_ct_nguyen.yaml
    python recipes/train_ddpm.py --train_data phantom --max_train_steps 500     # CPU smoke run

Same as `medsd train ddpm`; every flag is listed by --help.
"""

import sys

from medsd.training.ddpm import main

if __name__ == "__main__":
    sys.exit(main())
