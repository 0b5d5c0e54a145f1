"""``medsd ablation``: the four networks of Nguyen et al. Table I, trained with one budget on one dataset."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from medsd.errors import MedsdConfigError
from medsd.metrics.figures import labelled_rows_figure

from .common import check_out_dir, value_ranges
from .experiments import short_ddpm_run_fields

ABLATION_RANGES = value_ranges(
    at_least={
        "resolution": 8,
        "max_train_steps": 1,
        "train_batch_size": 1,
        "num_samples": 2,
        "num_inference_steps": 1,
        "seeds": 1,
    },
    positive=("learning_rate",),
)

# name -> (time_embedding, skip_connections, description); the paper's FID in its Table I
VARIANTS = {
    "no_skips": ("every_block", False, "encoder-decoder without skip connections", 548.7),
    "once": ("once", True, "U-Net, time embedding injected once at the input", 73.2),
    "encoder": ("encoder", True, "U-Net, time embedding only in the encoder half", 76.3),
    "every_block": ("every_block", True, "U-Net, time embedding after every down/up block (proposed)", 45.6),
}


SAMPLERS = ("fast", "ddpm")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablation",
        help="train the four time-embedding / skip-connection variants and compare them",
        description=(
            "Trains the four networks of Nguyen et al. (Table I) with the same data, steps, batch size and "
            "learning rate, samples each with the same seed, and writes a comparison table (radiomics "
            "Fréchet distance to held-out real images, degenerate-sample count, parameters, step time) "
            "and a figure with a row of samples per variant. With --seeds N every variant is trained and "
            "sampled N times (seeds seed, seed+1, ...) and the table gives mean ± std."
        ),
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML file of these options (e.g. recipes/configs/ablation_nguyen_light_ct.yaml); options given "
        "on the command line win",
    )
    p.add_argument(
        "--train_data", default="phantom", help="phantom, phantom-ct, a folder, a metadata CSV or hf:ID"
    )
    p.add_argument("--out", default="outputs/ablation", help="output folder")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--model", default="light-tiny", help="light U-Net preset the variants start from")
    p.add_argument("--max_train_steps", type=int, default=500)
    p.add_argument("--train_batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_samples", type=int, default=64, help="samples per variant for the metrics")
    p.add_argument(
        "--sampler",
        default="fast",
        choices=SAMPLERS,
        help="fast: medsd's saved DPM-Solver++ sampler (25 steps); ddpm: ancestral DDPM sampling as in the paper "
        "(all training timesteps unless --num_inference_steps)",
    )
    p.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="sampling steps (default: 25 for fast, the training timesteps for ddpm)",
    )
    p.add_argument("--seeds", type=int, default=1, help="independent runs per variant (mean ± std over them)")
    p.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    p.add_argument("--patient_column", default=None, help="patient id column of a CSV (patient-level split)")
    p.add_argument("--label_column", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite_output_dir", action="store_true")
    p.set_defaults(func=run, value_ranges=ABLATION_RANGES)


def _apply_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options from ``--config`` (YAML) where the command line left them at their defaults; a key or
    value the command line would refuse is refused in one line naming the file and the key."""
    if not getattr(args, "config", None):
        return args
    from medsd.training.config import load_yaml, unknown_keys_error

    path = Path(args.config)
    data = load_yaml(path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser.parse_args(["ablation"])
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    actions = {a.dest: a for a in subparsers.choices["ablation"]._actions}
    known = {k for k in vars(sub) if k not in ("func", "value_ranges", "config")}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise MedsdConfigError(unknown_keys_error(str(path), unknown, known))
    for k, v in data.items():
        v = _config_value(path, actions[k], v)
        if getattr(args, k) == getattr(sub, k):
            setattr(args, k, v)
    return args


def _config_value(path: Path, action: argparse.Action, value: Any) -> Any:
    """A YAML value for ``action`` converted as its flag would be, or a one-line error."""

    def bad(expected: str) -> MedsdConfigError:
        return MedsdConfigError(f"{path}: {action.dest}: expected {expected}, got {value!r}")

    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if value is None:
        return None
    if isinstance(value, list) and action.type is None and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # variants: [no_skips, once] as well as "no_skips,once"
    if isinstance(value, bool | list | dict):
        raise bad(_TYPE_TEXT.get(action.type, "a string"))
    if action.type is int and isinstance(value, float) and not value.is_integer():
        raise bad("an integer")
    try:
        value = (action.type or str)(value)
    except (TypeError, ValueError):
        raise bad(_TYPE_TEXT.get(action.type, "a string")) from None
    if action.choices and value not in action.choices:
        raise bad(f"one of {list(action.choices)}")
    return value


_TYPE_TEXT = {int: "an integer", float: "a number"}


def _sample(run_dir: Path, args: argparse.Namespace, seed: int) -> tuple[Any, Any, int, float]:
    """(pipeline, samples [N, H, W] in [0, 1], inference steps, seconds) of a trained variant."""
    import torch
    from diffusers import DDPMScheduler

    from medsd.pipelines.ddpm import MedDDPMPipeline

    pipe = MedDDPMPipeline.from_pretrained(run_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    if args.sampler == "ddpm":
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    steps = args.num_inference_steps or (
        pipe.scheduler.config.num_train_timesteps if args.sampler == "ddpm" else 25
    )
    t0 = time.perf_counter()
    fake = pipe(
        batch_size=args.num_samples,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed + 1),
        output_type="np",
    ).images
    return pipe, fake, steps, time.perf_counter() - t0


def _scores(
    fake: Any, real: Any, real_feats: Any, extractor: Any, seed: int, resolution: int
) -> dict[str, Any]:
    """Radiomics distances of ``fake`` to the held-out real images, and its degenerate-image count."""
    import numpy as np

    from medsd.metrics import degenerate_mask, distribution_metrics, extract_features

    fake_feats = extract_features(fake, extractor, progress=False)
    deg = degenerate_mask(np.round(fake * 255).astype(np.uint8), size=resolution)
    dist = distribution_metrics(
        real_feats,
        fake_feats,
        kid_subset_size=min(100, len(fake) // 2, len(real) // 2),
        seed=seed,
        scaling=extractor.scaling,
        fake_degenerate=deg,
        reference_draws=5,
    )
    ref = dist["real_reference"].get("real_vs_real", {}).get("frechet_distance", {})
    return {
        "radiomics_fd": dist["frechet_distance"],
        "radiomics_fd_all": dist["frechet_distance_all"],
        "real_real_fd": ref.get("mean"),
        "kid": dist["kid"],
        "precision": dist["precision"],
        "recall": dist["recall"],
        "degenerate": int(deg.sum()),
    }


def _variant_names(args: argparse.Namespace) -> list[str]:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    return names


def run(args: argparse.Namespace) -> int:
    from medsd.data import held_out
    from medsd.errors import check_values
    from medsd.metrics import extract_features, get_extractor
    from medsd.training.data_args import data_config
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    args = _apply_config(args)
    check_values(args, **ABLATION_RANGES)  # again: --config may have set them
    names = _variant_names(args)
    out = check_out_dir(
        args.out, ("ablation.json",), args.overwrite_output_dir, overwrite_flag="--overwrite_output_dir"
    )
    out.mkdir(parents=True, exist_ok=True)
    base = short_ddpm_run_fields(args, ema_decay=0.999, max_warmup_steps=200)
    real = held_out(
        data_config(DDPMTrainConfig(**base), seed=args.seed), max(args.num_samples, 16), args.seed
    )
    extractor = get_extractor("radiomics", size=args.resolution)
    real_feats = extract_features(real, extractor, progress=False)

    rows, sample_rows = [], {}
    seeds = [args.seed + i for i in range(args.seeds)]
    for name in names:
        time_embedding, skips, description, paper_fid = VARIANTS[name]
        for seed in seeds:
            run_dir = out / name if args.seeds == 1 else out / name / f"seed_{seed}"
            cfg = DDPMTrainConfig(
                **{**base, "seed": seed},
                output_dir=str(run_dir),
                time_embedding=time_embedding,
                skip_connections=skips,
            )
            print(f"== {name} (seed {seed}): {description}")
            result = train_ddpm(cfg)
            pipe, fake, steps, sample_s = _sample(result.output_dir, args, seed)
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "description": description,
                    "time_embedding": time_embedding,
                    "skip_connections": skips,
                    "parameters": sum(p.numel() for p in pipe.unet.parameters()),
                    "train_seconds_per_step": result.seconds / max(result.global_step, 1),
                    "final_train_loss": result.loss_history[-1][1] if result.loss_history else None,
                    "sampler": args.sampler,
                    "num_inference_steps": steps,
                    **_scores(fake, real, real_feats, extractor, seed, args.resolution),
                    "num_samples": len(fake),
                    "sampling_seconds": sample_s,
                    "paper_fid": paper_fid,
                }
            )
            if seed == seeds[0]:
                sample_rows[name] = fake[:8]
    return _write_report(args, out, rows, len(real), sample_rows)


def _write_report(
    args: argparse.Namespace, out: Path, rows: list[dict], n_real: int, sample_rows: dict
) -> int:
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "value_ranges")},
        "held_out_real_images": n_real,
        "rows": rows,
        "summary": summarise(rows),
    }
    (out / "ablation.json").write_text(json.dumps(report, indent=1))
    (out / "ablation.md").write_text(render_table(report))
    figure = labelled_rows_figure(sample_rows, out / "ablation_samples.png")
    print(render_table(report))
    print(f"table: {out / 'ablation.md'}  figure: {figure}")
    return 0


SUMMARY_METRICS = (
    "radiomics_fd",
    "radiomics_fd_all",
    "real_real_fd",
    "kid",
    "precision",
    "recall",
    "degenerate",
)


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant: mean and sample std (ddof 1; 0 for one seed) of each metric over its seeds."""
    import numpy as np

    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        row = {k: rs[0][k] for k in ("variant", "description", "parameters", "paper_fid", "num_samples")}
        row["seeds"] = [r["seed"] for r in rs]
        row["train_seconds_per_step"] = float(np.mean([r["train_seconds_per_step"] for r in rs]))
        for m in SUMMARY_METRICS:
            v = np.array([r[m] for r in rs if r.get(m) is not None], dtype=float)
            row[m] = {
                "mean": float(v.mean()) if len(v) else None,
                "std": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else None),
                "n": int(len(v)),
            }
        out.append(row)
    return out


def _ms(x: dict, nd: int = 2) -> str:
    if x["mean"] is None:
        return "n/a"
    return f"{x['mean']:.{nd}f} ± {x['std']:.{nd}f}"


def render_table(report: dict) -> str:
    s = report["settings"]
    rows = report["rows"]
    steps = rows[0]["num_inference_steps"] if rows else s.get("num_inference_steps")
    n_seeds = s.get("seeds", 1)
    lines = [
        "# Time-embedding ablation (Nguyen et al., Table I)",
        "",
        f"Data `{s['train_data']}` at {s['resolution']} px, model preset `{s['model']}`; {s['max_train_steps']} "
        f"steps, batch {s['train_batch_size']}, lr {s['learning_rate']}, EMA; {s['num_samples']} samples per "
        f"variant with the {s.get('sampler', 'fast')} sampler ({steps} steps); {n_seeds} seed(s) per variant "
        f"(mean ± std over seeds); radiomics Fréchet distance (medsd distance, robust-scaled, degenerate samples "
        f"left out; not comparable to the paper's FID) against {report['held_out_real_images']} held-out real "
        "images, next to real-vs-real at the same sample size.",
        "",
        "| variant | radiomics FD ↓ | FD real/real | KID ↓ | precision | recall | degenerate | params | s/step "
        "| paper FID |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.get("summary") or summarise(rows):
        lines.append(
            f"| {r['variant']} ({r['description']}) | {_ms(r['radiomics_fd'])} | {_ms(r['real_real_fd'])} | "
            f"{_ms(r['kid'], 3)} | {_ms(r['precision'])} | {_ms(r['recall'])} | {_ms(r['degenerate'], 1)} of "
            f"{r['num_samples']} | {r['parameters'] / 1e6:.2f} M | {r['train_seconds_per_step']:.3f} | "
            f"{r['paper_fid']} |"
        )
    return "\n".join(lines) + "\n"
