"""Helpers shared by the reader-study web-app tests: small studies, a live server on a free local port, and
answering through the JSON API the way the page's script does."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from medsd.data import chest_phantom
from medsd.metrics.reader_study import export_reader_study


def make_study(root: Path, design: str = "mixed", n: int = 4, size: int = 32) -> Path:
    """A study whose real cases are smooth phantoms and whose fakes are noise (they compress very differently)."""
    rng = np.random.default_rng(0)
    real = np.stack([chest_phantom(size, seed=i) for i in range(n + 2)])
    fake = rng.random((n + 2, size, size)).astype(np.float32)
    real_src = [f"/secret/real/patient_{i}.png" for i in range(n + 2)]
    fake_src = [f"/secret/fake/sample_{i}.png" for i in range(n + 2)]
    export_reader_study(
        None if design == "all_synthetic" else real,
        fake,
        root,
        n_each=n,
        design=design,
        seed=3,
        real_sources=real_src,
        fake_sources=fake_src,
    )
    return root


def read_key(study: Path) -> dict[str, str]:
    with open(study / "key.csv", newline="") as f:
        return {r["case_id"]: r["truth"] for r in csv.DictReader(f)}


def key_secrets(study: Path) -> list[str]:
    """Strings no response may contain: the key's sources (and their file names)."""
    with open(study / "key.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = set()
    for r in rows:
        for part in re.split(r"[;=]", r["source"]):
            if part not in ("real", "fake"):
                out |= {part, Path(part).name}
    return sorted(s for s in out if s)


def db_rows(study: Path) -> list[tuple]:
    """Every answer row of the study's database, in a stable order (for 'nothing changed' checks)."""
    con = sqlite3.connect(study / "reader_study.sqlite")
    try:
        return (
            con.execute(
                "SELECT reader_id, case_id, answer, confidence, findings, seconds, n_saves FROM answers "
                "ORDER BY reader_id, case_id"
            ).fetchall()
            + con.execute("SELECT id, name, submitted_at FROM readers ORDER BY id").fetchall()
        )
    finally:
        con.close()


@contextlib.contextmanager
def live_server(study: Path, coordinator_token: str = "coordinator-token-0123456789"):
    """The real waitress server of ``study`` on 127.0.0.1 and a free port, in a daemon thread; yields its URL."""
    from medsd.reader_app.server import make_server

    server, _ = make_server(study, port=0, threads=4, coordinator_token=coordinator_token)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.task_dispatcher.shutdown()
        for channel in list(server._map.values()):  # the listening socket and any kept-alive connection
            channel.close()
        thread.join(timeout=10)


def http(url: str, data: dict | None = None, headers: dict | None = None, timeout: float = 10):
    """(status, headers, body bytes) of a GET, or of a JSON POST when ``data`` is given; errors are returned."""
    body = None if data is None else json.dumps(data).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=h, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def page_data(html: str) -> dict[str, str]:
    """The ``data-*`` attributes of the case page's ``<main>`` (what the page's script posts with)."""
    main = re.search(r"<main[^>]*>", html, re.S).group(0)
    return {k: v for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', main)}
