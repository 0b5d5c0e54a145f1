"""``medsd reader_study``: export a blinded real-vs-synthetic reader study, and score the readers' answer sheets.

medsd reader_study export --real DIR --fake DIR --out STUDY [--n 50] [--design single|2afc] [--size 256]
medsd reader_study score --key STUDY/key.csv --answers reader1.csv reader2.csv [--out scores.json]
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "export a blinded real-vs-synthetic reader study, or score its answer sheets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("export", help="write shuffled blinded images, answer_sheet.csv and key.csv")
    e.add_argument("--real", required=True, help="real images (folder, CSV or hf:<id>)")
    e.add_argument("--fake", required=True, help="synthetic images (folder, CSV or hf:<id>)")
    e.add_argument("--out", required=True, help="study folder")
    e.add_argument("--real_label", default=None)
    e.add_argument("--fake_label", default=None)
    e.add_argument("--n", type=int, default=50, help="images per class (real and fake) or pairs (default 50)")
    e.add_argument("--design", choices=["single", "2afc"], default="single")
    e.add_argument("--size", type=int, default=256, help="exported image size in px (default 256)")
    e.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="per-reader accuracy and Cohen's kappa between readers")
    s.add_argument("--key", required=True, help="key.csv written by export")
    s.add_argument("--answers", nargs="+", required=True, help="filled answer sheets (reader = file name)")
    s.add_argument("--out", default=None, help="write the scores as JSON here")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reader_study", help=HELP, description=HELP + ".")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from medsd.metrics.io import load_image_set
    from medsd.metrics.reader_study import export_reader_study, score_reader_study

    try:
        if args.action == "export":
            real = load_image_set(args.real, size=args.size, label=args.real_label)
            fake = load_image_set(args.fake, size=args.size, label=args.fake_label)
            info = export_reader_study(
                real.images,
                fake.images,
                args.out,
                n_each=args.n,
                design=args.design,
                seed=args.seed,
                real_sources=real.paths or None,
                fake_sources=fake.paths or None,
            )
            print(f"wrote {info['n_cases']} cases to {args.out} (keep {args.out}/key.csv away from readers)")
            return 0
        scores = score_reader_study(args.key, list(args.answers))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"medsd reader_study: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(scores, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="medsd reader_study", description=HELP + ".")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
