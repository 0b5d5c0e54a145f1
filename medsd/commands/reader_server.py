"""The web-app actions of ``medsd reader_study``: ``serve``, ``add_reader``, ``export_answers`` (and the database
reading of ``score --db``). Registered by :mod:`medsd.commands.reader_study`.

medsd reader_study add_reader STUDY NAME [--new_link] [--url http://127.0.0.1:8765]
medsd reader_study serve STUDY [--host 127.0.0.1] [--port 8765]
medsd reader_study export_answers STUDY --out DIR [--include_unsubmitted] [--overwrite]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from .common import check_input_path

EXPORT_FIELDS = ["case_id", "stratum", "answer", "findings", "confidence", "seconds", "answered_at"]


def add_web_actions(sub) -> None:
    """The ``serve``, ``add_reader`` and ``export_answers`` sub-parsers."""
    v = sub.add_parser("serve", help="serve the study to readers as a local web app (answers in SQLite)")
    v.add_argument("study", metavar="STUDY_DIR", help="folder written by `medsd reader_study export`")
    v.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    v.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    v.add_argument("--threads", type=int, default=4, help="request threads (default 4)")
    a = sub.add_parser("add_reader", help="add a reader and print their personal link")
    a.add_argument("study", metavar="STUDY_DIR")
    a.add_argument("name", metavar="NAME", help="reader name (letters, digits, . _ -; names their CSV)")
    a.add_argument("--new_link", action="store_true", help="replace an existing reader's link (answers kept)")
    a.add_argument(
        "--url", default="http://127.0.0.1:8765", help="the server's address, for the printed link"
    )
    x = sub.add_parser("export_answers", help="write one answer CSV per reader from the study's database")
    x.add_argument("study", metavar="STUDY_DIR")
    x.add_argument("--out", required=True, help="folder for READER.csv files (what `score --answers` reads)")
    x.add_argument("--include_unsubmitted", action="store_true", help="also readers who have not submitted")
    x.add_argument("--overwrite", action="store_true", help="replace existing READER.csv files in --out")
    for p in (v, a, x):
        p.set_defaults(value_ranges={"at_least": {"port": 0, "threads": 1}, "at_most": {"port": 65535}})


def run_web_action(args: argparse.Namespace) -> int:
    check_input_path(args.study, "STUDY_DIR", kind="folder")
    if args.action == "serve":
        return serve(args)
    if args.action == "add_reader":
        return add_reader(args)
    return export_answers(args)


def add_reader(args: argparse.Namespace) -> int:
    from medsd.reader_app.db import ReaderStudyDB
    from medsd.reader_app.study import StudyCases

    study = StudyCases(args.study)
    token = ReaderStudyDB(study.db_path, study.case_ids).add_reader(args.name, new_link=args.new_link)
    print(f"{args.name}: {args.url.rstrip('/')}/r/{token}/")
    print("(send this link to the reader only: it is their key to their answers; it is not stored anywhere)")
    return 0


def serve(args: argparse.Namespace) -> int:
    from medsd.reader_app.server import LOOPBACK_HOSTS, make_server

    try:
        server, app = make_server(args.study, host=args.host, port=args.port, threads=args.threads)
    except OSError as e:
        raise ValueError(
            f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})"
        ) from None
    state = app.extensions["medsd_reader_app"]
    host = args.host if ":" not in args.host else f"[{args.host}]"
    url = f"http://{host}:{server.effective_port}"
    if args.host not in LOOPBACK_HOSTS:
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine can try links, and traffic is "
            "not encrypted; use 127.0.0.1 (the default) unless readers must connect from other machines",
            file=sys.stderr,
        )
    n = len(state.db.readers())
    print(
        f"serving {state.study.design} study {state.study.root} ({len(state.study.case_ids)} cases, {n} readers)"
    )
    print(f"coordinator: {url}/c/{state.coordinator_token}/", flush=True)
    print(
        f"readers: {url}/r/TOKEN/ (`medsd reader_study add_reader` prints each link); Ctrl-C stops",
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def db_sheets(db_path: str | Path, include_unsubmitted: bool) -> dict[str, dict[str, tuple[str, str]]]:
    """Answer sheets of a study database for scoring; readers who have not submitted are named and left out
    unless ``include_unsubmitted``."""
    from medsd.reader_app.db import ReaderStudyDB

    db = ReaderStudyDB.open_existing(db_path)
    sheets = db.sheets(submitted_only=not include_unsubmitted)
    open_ = sorted({r.name for r in db.readers()} - set(sheets))
    if open_:
        print(
            f"not scored (not submitted; --include_unsubmitted scores them): {', '.join(open_)}",
            file=sys.stderr,
        )
    return sheets


def export_answers(args: argparse.Namespace) -> int:
    from medsd.reader_app.db import ReaderStudyDB, ReaderStudyDBError
    from medsd.reader_app.study import StudyCases

    study = StudyCases(args.study)
    db = ReaderStudyDB(study.db_path, study.case_ids)
    readers = [r for r in db.readers() if r.submitted_at is not None or args.include_unsubmitted]
    if not readers:
        raise ReaderStudyDBError(f"{study.db_path}: no readers to export (none has submitted)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    present = [out / f"{r.name}.csv" for r in readers if (out / f"{r.name}.csv").exists()]
    if present and not args.overwrite:
        raise ValueError(f"--out {present[0]} already exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for r in readers:
        _write_atomic(out / f"{r.name}.csv", _answer_csv(study, db.answers(r.id)))
    print(f"wrote {len(readers)} answer sheet(s) to {out}: {', '.join(r.name + '.csv' for r in readers)}")
    return 0


def _answer_csv(study, answers: dict[str, dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    w.writeheader()
    for case in study.cases:
        a = answers.get(case.case_id) or {}
        w.writerow(
            {
                "case_id": case.case_id,
                "stratum": case.stratum,
                "answer": a.get("answer", ""),
                "findings": a.get("findings", ""),
                "confidence": "" if a.get("confidence") is None else a["confidence"],
                "seconds": f"{a['seconds']:.1f}" if a else "",
                "answered_at": f"{a['answered_at']:.3f}" if a else "",
            }
        )
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
