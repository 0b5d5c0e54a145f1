"""What the experiment commands (``medsd ablation``, ``medsd tstr``) share: one short DDPM run's settings."""

from __future__ import annotations

import argparse
from pathlib import Path
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


def sample_rows_figure(rows: dict[str, list[Any]], path: Path) -> Path:
    """A figure with one titled row of grayscale samples ([H, W] in [0, 1]) per entry of ``rows``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.3 * n_cols, 1.45 * len(rows)), dpi=110, squeeze=False
    )
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            axes[r][c].axis("off")
            if c < len(images):
                axes[r][c].imshow(images[c], cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
