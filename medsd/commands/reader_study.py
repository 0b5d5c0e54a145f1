"""``medsd reader_study``: export a blinded real-vs-synthetic reader study, and score the readers' answer sheets.

medsd reader_study export --real DIR --fake DIR --out STUDY [--n 50] [--design mixed|all_synthetic|2afc]
medsd reader_study export --design all_synthetic --fake xray=DIR --fake ct=DIR --n 20 --out STUDY
medsd reader_study score --key STUDY/key.csv --answers reader1.csv reader2.csv [--out scores.json]
medsd reader_study add_reader STUDY NAME; medsd reader_study serve STUDY   (the web app: docs/reader_study.md)
medsd reader_study score --key STUDY/key.csv --db STUDY/reader_study.sqlite
medsd reader_study export_answers STUDY --out DIR

``--real``/``--fake`` may be repeated as ``STRATUM=SOURCE`` (e.g. per modality); every stratum is sampled on its
own (``--n`` cases per class and stratum) and scored on its own too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (
    add_overwrite,
    check_input_path,
    check_out_dir,
    check_out_file,
    standalone_main,
    value_ranges,
)
from .reader_server import add_web_actions, db_sheets, run_web_action

HELP = "export a blinded real-vs-synthetic reader study, serve it to readers as a local web app, score the answers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("export", help="write shuffled blinded images, answer_sheet.csv and key.csv")
    e.add_argument(
        "--real",
        action="append",
        default=None,
        help="real images (folder, CSV or hf:<id>), or STRATUM=SOURCE, repeatable; not needed for all_synthetic",
    )
    e.add_argument(
        "--fake",
        action="append",
        required=True,
        help="synthetic images (folder, CSV or hf:<id>), or STRATUM=SOURCE, repeatable (e.g. xray=DIR ct=DIR)",
    )
    e.add_argument("--out", required=True, help="study folder")
    e.add_argument("--real_label", default=None)
    e.add_argument("--fake_label", default=None)
    e.add_argument(
        "--n", type=int, default=50, help="cases per class (real, fake) and stratum, or pairs (default 50)"
    )
    e.add_argument(
        "--design",
        choices=["mixed", "all_synthetic", "2afc"],
        default="mixed",
        help="mixed: real and fake shuffled; all_synthetic: every case synthetic "
        "(Spot the fake lungs); 2afc: real/fake pairs",
    )
    e.add_argument("--size", type=int, default=256, help="exported image size in px (default 256)")
    e.add_argument("--seed", type=int, default=0)
    add_overwrite(e, "the images, answer sheet and key of an earlier export")
    e.set_defaults(value_ranges=value_ranges(at_least={"n": 1, "size": 8}))
    s = sub.add_parser("score", help="per-reader accuracy and Cohen's kappa between readers")
    s.add_argument("--key", required=True, help="key.csv written by export")
    s.add_argument("--answers", nargs="+", default=[], help="filled answer sheets (reader = file name)")
    s.add_argument("--db", default=None, help="the web app's database (STUDY/reader_study.sqlite); with or "
                   "instead of --answers")  # fmt: skip
    s.add_argument(
        "--include_unsubmitted", action="store_true", help="--db: also score readers who have not submitted"
    )
    s.add_argument(
        "--out", default=None, help="write the scores as JSON here (and the tables as .md beside it)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_web_actions(sub)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reader_study", help=HELP, description=HELP + ".")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _strata(specs: list[str] | None) -> dict[str, str]:
    """``["xray=DIR", "ct=DIR"]`` -> ``{"xray": DIR, "ct": DIR}``; a single plain source -> ``{"all": source}``."""
    out: dict[str, str] = {}
    for spec in specs or []:
        name, eq, src = spec.partition("=")
        if not eq or not name or "/" in name or not src:
            name, src = "all", spec
        if name in out:
            raise ValueError(f"stratum {name!r} given twice (use STRATUM=SOURCE for several sources)")
        out[name] = src
    if "all" in out and len(out) > 1:
        raise ValueError("give every source as STRATUM=SOURCE when there are several")
    return out


def _score(args) -> dict:
    """Scores of ``--answers`` CSVs and/or the web app's ``--db``, all through the one scoring function."""
    from medsd.metrics.reader_study import read_answer_sheet, score_answer_sheets

    check_input_path(args.key, "--key")
    if not args.answers and not args.db:
        raise ValueError("give --answers CSV files, --db STUDY/reader_study.sqlite, or both")
    for answers in args.answers:
        check_input_path(answers, "--answers")
    check_input_path(args.db, "--db")
    check_out_file(args.out, args.overwrite)
    sheets = {Path(p).stem: read_answer_sheet(p) for p in args.answers}
    where = {Path(p).stem: str(p) for p in args.answers}
    if len(sheets) < len(args.answers):
        raise ValueError("--answers: two sheets have the same file name (the reader's name); rename one")
    if args.db:
        from_db = db_sheets(args.db, args.include_unsubmitted)
        twice = sorted(set(from_db) & set(sheets))
        if twice:
            raise ValueError(f"reader(s) {twice} are both in --db and --answers")
        sheets.update(from_db)
        where.update({name: f"{args.db} (reader {name})" for name in from_db})
    if not sheets:
        raise ValueError(f"--db {args.db}: no reader has submitted yet (--include_unsubmitted scores them)")
    return score_answer_sheets(args.key, sheets, where)


def run(args) -> int:
    try:
        if args.action == "export":
            from medsd.metrics.io import load_image_set
            from medsd.metrics.reader_study import export_reader_study

            check_out_dir(args.out, ("key.csv", "answer_sheet.csv"), args.overwrite)
            design = args.design
            fakes = _strata(args.fake)
            reals = _strata(args.real)
            if design != "all_synthetic" and not reals:
                raise ValueError(f"--design {design} needs --real")
            if design == "all_synthetic":
                reals = {}
            fset = {k: load_image_set(v, size=args.size, label=args.fake_label) for k, v in fakes.items()}
            rset = {k: load_image_set(v, size=args.size, label=args.real_label) for k, v in reals.items()}
            info = export_reader_study(
                {k: v.images for k, v in rset.items()} or None,
                {k: v.images for k, v in fset.items()},
                args.out,
                n_each=args.n,
                design=design,
                seed=args.seed,
                real_sources={k: v.paths for k, v in rset.items() if v.paths} or None,
                fake_sources={k: v.paths for k, v in fset.items() if v.paths} or None,
            )
            strata = ", ".join(f"{k}: {v['fake']} fake + {v['real']} real" for k, v in info["strata"].items())
            print(
                f"wrote {info['n_cases']} cases ({info['design']}; {strata}) to {args.out} "
                f"(keep {args.out}/key.csv away from readers)"
            )
            return 0
        if args.action != "score":
            return run_web_action(args)
        scores = _score(args)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"medsd reader_study: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from medsd.metrics.reader_study import render_scores_markdown

    text = json.dumps(scores, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        Path(args.out).with_suffix(".md").write_text(render_scores_markdown(scores))
    print(render_scores_markdown(scores))
    return 0


def main(argv=None) -> int:
    return standalone_main("medsd reader_study", HELP + ".", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
