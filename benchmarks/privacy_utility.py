"""The privacy-utility table of docs/privacy.md: light DDPMs trained with DP-SGD at several ε, scored with the
toolkit's own tools, at one step budget for every row.

For each row, one DDPM per class (No Finding, Pneumonia: the pair ``medsd tstr`` uses) is trained on the
patient-level training split of the NIH images, privately (``--dp --dp_target_epsilon E``) or not, from scratch or
fine-tuned from a DDPM pre-trained non-privately on public phantoms (``--init_from``). Its samples are scored by
``medsd eval`` (radiomics Fréchet distance against held-out patients at the training resolution, the memorisation
audit against the training images at ``--audit_size``) and by train-on-synthetic, test-on-real AUROC
(``medsd.metrics.downstream``, as ``medsd tstr``). ``--audit_only`` re-runs only the audit on the samples of an
earlier run and updates those rows of ``--json``.

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/privacy_utility.py \\
        --steps 300 --resolution 32 --out outputs/privacy_utility --json docs/perf/privacy_utility_cpu.json

Steps, not minutes, fix the budget: a shared machine changes the time, not the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NIH = "/work/shared/data/nih_cxr14/metadata.csv"
CLASSES = ("No Finding", "Pneumonia")
ROWS = (
    {"name": "no DP, from scratch", "epsilon": None, "pretrained": False},
    {"name": "DP ε≈10, from scratch", "epsilon": 10.0, "pretrained": False},
    {"name": "DP ε≈3, from scratch", "epsilon": 3.0, "pretrained": False},
    {"name": "DP ε≈10, fine-tuned from phantoms", "epsilon": 10.0, "pretrained": True},
    {"name": "DP ε≈3, fine-tuned from phantoms", "epsilon": 3.0, "pretrained": True},
    {
        "name": "DP ε≈10 per patient, fine-tuned from phantoms",
        "epsilon": 10.0,
        "pretrained": True,
        "unit": "patient",
    },
)


def base_fields(args: argparse.Namespace, data: str) -> dict:
    """The DDPM settings every run shares (the budget included)."""
    return dict(
        train_data=data,
        resolution=args.resolution,
        model=args.model,
        max_train_steps=args.steps,
        train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler="constant",
        use_ema=True,
        ema_decay=0.99,
        mixed_precision="no",
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=max(1, args.steps // 10),
        progress_bar=False,
        seed=args.seed,
        overwrite_output_dir=True,
        report_to="none",
    )


def train_run(args: argparse.Namespace, row: dict, cls: str, out: Path, init_from: str | None) -> dict:
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    fields = base_fields(args, NIH)
    fields.update(label_column="label", patient_column="patient_id", train_labels=cls, init_from=init_from)
    if row["epsilon"] is not None:
        fields.update(
            dp=True,
            dp_target_epsilon=row["epsilon"],
            dp_max_grad_norm=args.clip,
            dp_augmentation_multiplicity=args.multiplicity,
            dp_unit=row.get("unit", "image"),
        )
    result = train_ddpm(DDPMTrainConfig(**fields, output_dir=str(out)))
    summary = json.loads((out / "train_summary.json").read_text())
    return {
        "steps": result.global_step,
        "seconds": result.seconds,
        "final_loss": result.loss_history[-1][1] if result.loss_history else None,
        "privacy": summary.get("differential_privacy"),
    }


def pretrain(args: argparse.Namespace, out: Path) -> str:
    """A light DDPM trained non-privately on public phantoms: the starting point of private fine-tuning."""
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    if not (out / "train_summary.json").is_file():
        fields = base_fields(args, "phantom")
        fields.update(phantom_count=512, learning_rate=args.learning_rate)
        train_ddpm(DDPMTrainConfig(**fields, output_dir=str(out)))
    return str(out)


def sample(model: Path, n: int, folder: Path, seed: int, steps: int, prefix: str):
    """``n`` samples of ``model`` as PNGs in ``folder`` (for ``medsd eval``); returns them as [n, H, W] in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    from medsd.pipelines.ddpm import MedDDPMPipeline

    pipe = MedDDPMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, 64):
        parts.append(
            pipe(
                batch_size=min(64, n - start), num_inference_steps=steps, generator=gen, output_type="np"
            ).images
        )
    x = np.concatenate(parts)
    x = x[..., 0] if x.ndim == 4 else x
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype("uint8")).save(
            folder / f"{prefix}_{i:04d}.png"
        )
    return x


def eval_command(fake: Path, out: Path, size: int, audit: bool) -> list[str]:
    """``medsd eval`` of ``fake`` against held-out patients at ``size`` px; with ``audit``, the memorisation audit
    against the training split."""
    labels = ",".join(CLASSES)
    train = ["--train", NIH, "--train_split", "train", "--train_label", labels] if audit else []
    return [
        sys.executable, "-m", "medsd", "eval",
        "--real", NIH, "--real_split", "heldout", "--real_label", labels, "--copy_quantile", "0.01", *train,
        "--fake", str(fake), "--out", str(out), "--features", "radiomics", "--size", str(size),
        "--no_c2st", "--no_image_figures", "--quiet",
    ]  # fmt: skip


def run_eval(cmd: list[str], out: Path) -> dict:
    """The report of ``cmd``. A report written after the newest sample, of the same samples, size and audit
    settings, is reused (``--audit_only`` on audits already run); a report older than this call is never read."""
    report_path, fake = out / "report.json", Path(cmd[cmd.index("--fake") + 1])
    want = {"fake": str(fake), "size": int(cmd[cmd.index("--size") + 1]), "copy_quantile": 0.01}
    want["train"] = cmd[cmd.index("--train") + 1] if "--train" in cmd else None
    newest_sample = max((f.stat().st_mtime for f in fake.glob("*.png")), default=0.0)
    if report_path.is_file() and report_path.stat().st_mtime > newest_sample:
        report = json.loads(report_path.read_text())
        if all((report.get("settings") or {}).get(k) == v for k, v in want.items()):
            return report
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not report_path.is_file() or report_path.stat().st_mtime < started:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(report_path.read_text())


def _dcr_median(mem: dict, which: str) -> float | None:
    """Median registered-NCC distance of ``which`` images to their nearest training image (the audit's DCR)."""
    return (((mem.get("dcr") or {}).get(which) or {}).get("registered_ncc") or {}).get("median")


def distribution_fields(report: dict) -> dict:
    radiomics = (report.get("distribution") or {}).get("radiomics") or {}
    return {
        "radiomics_fd": radiomics.get("frechet_distance"),
        "radiomics_fd_all": radiomics.get("frechet_distance_all"),
        "n_degenerate": radiomics.get("n_degenerate_fake"),
        "radiomics_fd_real_baseline": (radiomics.get("real_split_half_baseline") or {}).get(
            "frechet_distance"
        ),
    }


def audit_fields(report: dict, fake: Path, size: int, cmd: list[str]) -> dict:
    mem = report.get("memorisation") or {}
    calibration = mem.get("calibration") or {}
    kinds = (mem.get("self_test") or {}).get("kinds") or {}
    return {
        "audit_size": size,
        "audit_copies": mem.get("n_copies"),
        "audit_valid": mem.get("valid"),
        "audit_problems": mem.get("problems", report.get("error")),
        "audit_n_generated": len(list(fake.glob("*.png"))),
        "audit_train_patients_with_copy": mem.get("n_train_patients_with_copy"),
        "audit_n_train_patients": mem.get("n_train_patients"),
        "audit_n_heldout": calibration.get("n_heldout"),
        "audit_false_alarm_rate_leave_one_out": calibration.get("false_alarm_rate_leave_one_out"),
        "audit_self_test_recall": {kind: k.get("recall") for kind, k in kinds.items()},
        "dcr_median_ncc": _dcr_median(mem, "generated"),
        "dcr_median_ncc_heldout_real": _dcr_median(mem, "heldout"),
        "audit_seconds": report.get("runtime_s"),
        "audit_command": " ".join(cmd[1:]),
    }


def audit_folder(args: argparse.Namespace, i: int) -> Path:
    """Where row ``i``'s audit report goes: ``--audit_dir``/row<i>, by default <out>/row<i>/audit<size>."""
    if args.audit_dir:
        return Path(args.audit_dir) / f"row{i}"
    return Path(args.out) / f"row{i}" / f"audit{args.audit_size}"


def score_audit(fake: Path, out: Path, size: int) -> tuple[dict, dict]:
    """(audit fields, the whole report) of the memorisation audit of ``fake`` at ``size`` px."""
    cmd = eval_command(fake, out, size, audit=True)
    report = run_eval(cmd, out)
    return audit_fields(report, fake, size, cmd), report


def score_eval(fake: Path, eval_out: Path, audit_out: Path, args: argparse.Namespace) -> dict:
    """Radiomics FD at the training resolution and the memorisation audit at ``--audit_size`` (one ``medsd eval``
    when they are the same): at 32 px the audit's self-test misses noisy copies."""
    audit, report = score_audit(fake, audit_out, args.audit_size)
    command = audit["audit_command"]
    if args.audit_size != args.resolution:
        cmd = eval_command(fake, eval_out, args.resolution, audit=False)
        report, command = run_eval(cmd, eval_out), " ".join(cmd[1:])
    fields = distribution_fields(report)
    if "error" in report:
        fields["error"] = report["error"]
    return {**fields, **audit, "command": command}


def real_sets(args: argparse.Namespace):
    """(training images, labels), (held-out images, labels) of the two classes, split as training does."""
    from medsd.commands.tstr import _images01
    from medsd.data import build_dataset
    from medsd.training.data_args import data_config, select_labels
    from medsd.training.ddpm import DDPMTrainConfig

    cfg = DDPMTrainConfig(**base_fields(args, NIH), label_column="label", patient_column="patient_id")
    sets = {}
    for split in ("train", "test"):
        ds, _ = build_dataset(data_config(cfg, seed=args.seed, split=split))
        ds = select_labels(ds, ",".join(CLASSES))
        canon = {c.lower(): c for c in CLASSES}
        sets[split] = (_images01(ds), [canon[str(lab).lower()] for lab in ds.labels])
    return sets["train"], sets["test"]


def run_row(args: argparse.Namespace, i: int, real: tuple, init_from: str | None) -> dict:
    import numpy as np

    from medsd.metrics.downstream import downstream_utility

    row, out = ROWS[i], Path(args.out) / f"row{i}"
    (_, train_labels), test = real
    fake_dir = out / "samples"
    runs, xs, ys = {}, [], []
    for ci, cls in enumerate(CLASSES):
        model = out / f"ddpm_{cls.lower().replace(' ', '_')}"
        runs[cls] = train_run(args, row, cls, model, init_from if row["pretrained"] else None)
        n = min(train_labels.count(cls), args.max_synthetic)
        xs.append(sample(model, n, fake_dir, args.seed + 1000 + ci, args.inference_steps, cls[:2].lower()))
        ys += [cls] * n
    tstr = downstream_utility(
        {"synthetic": (np.concatenate(xs), ys)},
        test,
        epochs=args.classifier_epochs,
        size=args.resolution,
        n_boot=200,
        seed=args.seed,
        num_threads=1,
    )
    synthetic = tstr["results"]["synthetic"]
    return {
        **row,
        "per_class": runs,
        "tstr_auroc": synthetic.get("auroc"),
        "tstr_auroc_ci95": synthetic.get("auroc_ci95"),
        **score_eval(fake_dir, out / "eval", audit_folder(args, i), args),
    }


def _audit_cell(r: dict) -> str:
    valid = {True: "valid", False: "invalid"}.get(r.get("audit_valid"), "n/a")
    patients = f"{r.get('audit_train_patients_with_copy', 'n/a')} of {r.get('audit_n_train_patients', 'n/a')}"
    return f"{r.get('audit_copies')} / {r.get('audit_n_generated')}, {valid}, {patients}"


def markdown_table(report: dict) -> str:
    """The docs/privacy.md table of a report (``--table``)."""

    def f(x, fmt=".3g"):
        return "n/a" if x is None else format(x, fmt)

    sizes = {r.get("audit_size") for r in report.get("rows", {}).values()}
    at = f" at {sizes.pop()} px" if len(sizes) == 1 and None not in sizes else ""
    lines = [
        f"| training | ε spent (No Finding / Pneumonia) | noise σ | radiomics FD ↓ | audit{at}: copies / generated, "
        "self-test, training patients with a copy | median distance to nearest training image | "
        "TSTR AUROC [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report.get("rows", {}).items():
        priv = [c.get("privacy") for c in r["per_class"].values()]
        eps = " / ".join("∞" if p is None else f(p["epsilon"], ".2f") for p in priv)
        sigma = " / ".join("0" if p is None else f(p["noise_multiplier"], ".2f") for p in priv)
        ci = r.get("tstr_auroc_ci95") or [None, None]
        fd = r.get("radiomics_fd") if r.get("radiomics_fd") is not None else r.get("radiomics_fd_all")
        lines.append(
            f"| {name} | {eps} | {sigma} | {f(fd, '.1f')} | {_audit_cell(r)} | "
            f"{f(r.get('dcr_median_ncc'), '.3f')} (real held-out {f(r.get('dcr_median_ncc_heldout_real'), '.3f')}) | "
            f"{f(r.get('tstr_auroc'), '.3f')} [{f(ci[0], '.2f')}, {f(ci[1], '.2f')}] |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--model", default="light-tiny")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--multiplicity", type=int, default=4)
    p.add_argument("--max_synthetic", type=int, default=200)
    p.add_argument("--inference_steps", type=int, default=25)
    p.add_argument("--classifier_epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="row numbers to run")
    p.add_argument("--out", default="outputs/privacy_utility")
    p.add_argument("--json", default="docs/perf/privacy_utility_cpu.json")
    p.add_argument(
        "--audit_size",
        type=int,
        default=64,
        help="px of the memorisation audit (at 32 its self-test missed noisy copies on NIH)",
    )
    p.add_argument(
        "--audit_dir", default=None, help="audit reports in <dir>/row<i> (default <out>/row<i>/audit<size>)"
    )
    p.add_argument(
        "--audit_only",
        action="store_true",
        help="re-run only the audit of --rows on their existing samples in --out and update those rows of --json",
    )
    p.add_argument("--table", action="store_true", help="print the markdown table of --json and stop")
    return p.parse_args(argv)


def save(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float))
    tmp.replace(path)  # after every row: a benchmark stopped early keeps the rows it has


def audit_only(args: argparse.Namespace, report: dict, path: Path, command: str) -> None:
    """Re-run the audit of rows already in ``report`` on their samples; every other figure is kept."""
    rows = report.get("rows", {})
    for i in (int(r) for r in args.rows.split(",") if r):
        name, fake = ROWS[i]["name"], Path(args.out) / f"row{i}" / "samples"
        if name not in rows or not any(fake.glob("*.png")):
            raise SystemExit(f"--audit_only: row {i} ({name}) has no entry in {path} or no samples in {fake}")
        audit, _ = score_audit(fake, audit_folder(args, i), args.audit_size)
        rows[name].update(audit, audit_benchmark_command=command)
        save(report, path)
        print(json.dumps({"row": i, **audit}, default=float), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out, path = Path(args.out), Path(args.json)
    report = json.loads(path.read_text()) if path.is_file() else {}
    if args.table:
        print(markdown_table(report))
        return 0
    command = "python benchmarks/privacy_utility.py " + " ".join(argv or sys.argv[1:])
    if args.audit_only:
        audit_only(args, report, path, command)
        return 0
    report.update(settings=vars(args), command=command)  # the latest; each row keeps its own below
    rows = report.setdefault("rows", {})
    real = real_sets(args)
    init_from = None
    for i in (int(r) for r in args.rows.split(",") if r):
        if ROWS[i]["pretrained"] and init_from is None:
            init_from = pretrain(args, out / "pretrained_phantom")
        t0 = time.perf_counter()
        result = run_row(args, i, real, init_from)
        name = ROWS[i]["name"]
        rows[name] = {**result, "benchmark_command": command, "minutes": (time.perf_counter() - t0) / 60}
        save(report, path)
        print(
            json.dumps({k: v for k, v in rows[name].items() if k != "per_class"}, default=float), flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
