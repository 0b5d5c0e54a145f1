"""``medsd train ddpm|cddpm|sd-lora``: the recipes, on the shared training core."""

from __future__ import annotations

import argparse
import importlib

FAMILIES = {
    "ddpm": ("medsd.training.ddpm", "lightweight / UNet2DModel unconditional DDPM (recipes/train_ddpm.py)"),
    "cddpm": (
        "medsd.training.cddpm",
        "image-conditioned cDDPM: sr, denoise, inpaint (recipes/train_cddpm.py)",
    ),
    "sd-lora": (
        "medsd.training.sd_lora",
        "Stable Diffusion text-to-X-ray LoRA (recipes/finetune_sd_xray.py)",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model family (see `medsd train FAMILY --help` for its flags)",
        description="Train a medsd model. Every flag can also come from a YAML file given with --config.",
    )
    family = parser.add_subparsers(dest="family", metavar="FAMILY", required=True)
    for name, (module, help_text) in FAMILIES.items():
        # The family's own parser (built from its config dataclass) reads the rest, --help included.
        p = family.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(func=run, training_module=module, passthrough=True)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(args.training_module)
    return int(module.main(args.extra_args) or 0)
