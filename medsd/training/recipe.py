"""The command-line entry point of every training family (``medsd train FAMILY``, ``recipes/*.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .config import parse_config
from .core import TrainResult


def recipe_main(
    config_cls: type,
    train_fn: Callable[[Any], TrainResult],
    prog: str,
    argv: list[str] | None = None,
    *,
    saved: str = "pipeline",
) -> int:
    """Parse ``config_cls``'s flags (and ``--config`` YAML), train with ``train_fn``, say where ``saved`` went."""
    config = parse_config(config_cls, argv, prog=prog, check=False)  # checked once, by Trainer.from_config
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = train_fn(config)
    print(f"{saved} saved to {result.output_dir} ({result.global_step} steps, {result.seconds:.0f} s)")
    return 0
