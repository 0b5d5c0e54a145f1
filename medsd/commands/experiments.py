"""What the experiment commands (``medsd ablation``, ``medsd tstr``) share: one short DDPM run's settings."""

from __future__ import annotations

import argparse
from typing import Any


def short_ddpm_run_fields(
    args: argparse.Namespace, *, ema_decay: float, max_warmup_steps: int, **extra: Any
) -> dict[str, Any]:
    """``DDPMTrainConfig`` fields for one run of an experiment: the command's data, model and budget
    flags, a cosine LR with warm-up, EMA, and no checkpoints, validation or trackers (the command
    evaluates the result itself)."""
    steps = args.max_train_steps
    return dict(
        train_data=args.train_data,
        label_column=args.label_column,
        patient_column=args.patient_column,
        resolution=args.resolution,
        model=args.model,
        max_train_steps=steps,
        train_batch_size=args.train_batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler="cosine",
        lr_warmup_steps=min(max_warmup_steps, steps // 10),
        use_ema=True,
        ema_decay=ema_decay,
        mixed_precision=args.mixed_precision,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=max(1, min(50, steps // 10)),
        seed=args.seed,
        overwrite_output_dir=args.overwrite_output_dir,
        report_to="none",
        **extra,
    )
