"""A killed server loses no committed answer: ``medsd reader_study serve`` in a subprocess, killed with SIGKILL
after each answer (and once in the middle of a stream of answers), restarted, and the database checked."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from reader_app_fixtures import http, make_study, page_data

from medsd.reader_app.db import ReaderStudyDB
from medsd.reader_app.study import StudyCases

ROOT = Path(__file__).resolve().parents[1]


def _start(study: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medsd.commands.reader_study", "serve", str(study), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith("coordinator: "):
            return proc, line.split()[1].split("/c/")[0]
    proc.kill()
    raise AssertionError(f"server did not start: {''.join(seen)[-2000:]}")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _answer(base: str, token: str, pos: int, answer: str) -> int:
    d = page_data(http(f"{base}/r/{token}/case/{pos}")[2].decode())
    body = {"case": d["case"], "answer": answer, "findings": f"finding {pos}", "seconds": 1.0}
    return http(f"{base}/r/{token}/answer", body, {"X-CSRF-Token": d["csrf"]})[0]


def test_sigkill_after_each_answer_loses_and_duplicates_nothing(tmp_path):
    study = make_study(tmp_path / "s", n=3)
    cases = StudyCases(study)
    db = ReaderStudyDB(cases.db_path, cases.case_ids)
    token = db.add_reader("alice")
    reader = db.reader_by_token(token)
    choices = ("real", "fake", "unsure")
    expected: dict[str, str] = {}
    for pos in range(1, len(reader.order) + 1):
        proc, base = _start(study)
        try:
            # the restarted server resumes the reader at the first unanswered case
            status, headers, html = http(f"{base}/r/{token}/")
            assert status == 200 and f"Case {pos} of {len(reader.order)}" in html.decode()
            answer = choices[pos % 3]
            assert _answer(base, token, pos, answer) == 200
            expected[reader.order[pos - 1]] = answer
        finally:
            _kill(proc)
        stored = db.answers(reader.id)
        assert {c: a["answer"] for c, a in stored.items()} == expected  # none lost, none extra
        assert all(a["n_saves"] == 1 and a["findings"].startswith("finding ") for a in stored.values())


def test_sigkill_in_a_stream_of_answers_keeps_every_acknowledged_one(tmp_path):
    study = make_study(tmp_path / "s", n=4)
    cases = StudyCases(study)
    db = ReaderStudyDB(cases.db_path, cases.case_ids)
    token = db.add_reader("bob")
    reader = db.reader_by_token(token)
    proc, base = _start(study)
    acknowledged: list[int] = []
    try:
        pages = [page_data(http(f"{base}/r/{token}/case/{p}")[2].decode()) for p in range(1, 9)]

        def stream():
            for p, d in enumerate(pages, 1):
                try:
                    body = {"case": d["case"], "answer": "fake", "seconds": 0.5}
                    if (
                        http(f"{base}/r/{token}/answer", body, {"X-CSRF-Token": d["csrf"]}, timeout=5)[0]
                        == 200
                    ):
                        acknowledged.append(p)
                except OSError:
                    return

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        _kill(proc)
        t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acknowledged) >= 3
    stored = db.answers(reader.id)
    acked_ids = {reader.order[p - 1] for p in acknowledged}
    assert acked_ids <= set(stored)  # every acknowledged answer survived
    # at most the one request in flight at the kill was committed without its reply arriving
    assert len(stored) - len(acked_ids) <= 1 and all(a["n_saves"] == 1 for a in stored.values())
    proc, base = _start(study)  # and the database opens again, with the reader resuming after them
    try:
        assert http(f"{base}/r/{token}/")[0] == 200
    finally:
        _kill(proc)
