"""The reader-study web app (Flask, served by waitress): reader pages, JSON answers, blinded images, coordinator.

Routes (``TOKEN``: a reader's secret link token; ``CTOKEN``: the coordinator's, new at every start):

- ``GET /r/TOKEN/``: resume (first unanswered case, or the review page); ``GET /r/TOKEN/case/N``: case N of the
  reader's own order; ``GET /r/TOKEN/review``; ``GET /r/TOKEN/image/ID``: an image under an opaque per-reader id;
- ``POST /r/TOKEN/answer`` and ``POST /r/TOKEN/submit``: JSON, with the page's ``X-CSRF-Token`` header, same
  origin only; every answer is committed before the reply;
- ``GET /c/CTOKEN/``: who has finished; ``GET /static/NAME``: the app's own script and style sheet.

Nothing reads a file named by a request: images come from the study's case list, static files from memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request
from werkzeug.exceptions import HTTPException

from .db import Reader, ReaderStudyDB, ReaderStudyDBError
from .study import StudyCases

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_FINDINGS = 4000
MAX_SECONDS = 24 * 3600.0
KEYS = {"real": "r", "fake": "f", "unsure": "u", "A": "a", "B": "b"}
_HERE = Path(__file__).resolve().parent
_STATIC_TYPES = {"reader.js": "text/javascript; charset=utf-8", "reader.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _hmac(secret: bytes, text: str, n: int = 24) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:n]


class ReaderApp:
    """The study, its database and the per-reader opaque ids and form tokens behind the routes."""

    def __init__(self, study_dir: str | Path, coordinator_token: str | None = None):
        self.study = StudyCases(study_dir)
        self.db = ReaderStudyDB(self.study.db_path, self.study.case_ids)
        self.secret = self.db.secret()
        self.coordinator_token = coordinator_token or secrets.token_urlsafe(24)
        self.sides = 2 if self.study.design == "2afc" else 1

    def reader(self, token: str) -> Reader:
        reader = self.db.reader_by_token(token)
        if reader is None:
            abort(
                403, description="This link is not valid; ask the study coordinator for your personal link."
            )
        return reader

    def image_id(self, reader: Reader, case_id: str, side: int) -> str:
        return _hmac(self.secret, f"image/{reader.id}/{case_id}/{side}")

    def case_id_token(self, reader: Reader, case_id: str) -> str:
        return _hmac(self.secret, f"case/{reader.id}/{case_id}")

    def csrf(self, reader: Reader) -> str:
        return _hmac(self.secret, f"csrf/{reader.id}", 32)

    def find_image(self, reader: Reader, image_id: str) -> tuple[str, int] | None:
        for case_id in reader.order:
            for side in range(self.sides):
                if hmac.compare_digest(self.image_id(reader, case_id, side), image_id):
                    return case_id, side
        return None

    def find_case(self, reader: Reader, case_token: Any) -> str | None:
        if not isinstance(case_token, str):
            return None
        hits = [c for c in reader.order if hmac.compare_digest(self.case_id_token(reader, c), case_token)]
        return hits[0] if hits else None

    def check_same_origin_json(self, reader: Reader) -> Any:
        """A state-changing request: same origin, JSON body, the page's CSRF token; else 403/415/400."""
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            abort(403, description="cross-site request refused")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            abort(403, description="cross-site request refused")
        if not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), self.csrf(reader)):
            abort(403, description="missing or wrong X-CSRF-Token header; reload the page")
        if not request.is_json:
            abort(415, description="expected a JSON body (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="expected a JSON object")
        return body


def valid_answer(body: dict, choices: tuple[str, ...]) -> dict:
    """The checked fields of an answer payload, or a 400 naming the bad field (nothing is written)."""
    allowed = {"case", "answer", "confidence", "findings", "seconds"}
    extra = sorted(set(body) - allowed)
    if extra:
        abort(400, description=f"unknown field(s) {extra}; expected {sorted(allowed)}")
    if body.get("answer") not in choices:
        abort(400, description=f"answer must be one of {list(choices)}")
    conf = body.get("confidence")
    if conf is not None and (type(conf) is not int or not 1 <= conf <= 5):
        abort(400, description="confidence must be null or an integer 1..5")
    findings = body.get("findings", "")
    if not isinstance(findings, str) or len(findings) > MAX_FINDINGS:
        abort(400, description=f"findings must be text of at most {MAX_FINDINGS} characters")
    seconds = body.get("seconds", 0)
    if type(seconds) not in (int, float) or not 0 <= seconds <= MAX_SECONDS:
        abort(400, description=f"seconds must be a number 0..{MAX_SECONDS:.0f}")
    return {
        "answer": body["answer"],
        "confidence": conf,
        "findings": findings.strip(),
        "seconds": float(seconds),
    }


def create_reader_app(
    study_dir: str | Path, coordinator_token: str | None = None, allowed_hosts: frozenset[str] | None = None
) -> Flask:
    """The Flask app of a study folder. ``allowed_hosts``: Host names accepted (None: any; the CLI passes the
    loopback names when bound to 127.0.0.1, which stops DNS-rebinding pages from reaching the app)."""
    state = ReaderApp(study_dir, coordinator_token)
    app = Flask(__name__, static_folder=None, template_folder=str(_HERE / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.extensions["medsd_reader_app"] = state
    static = {name: (_HERE / "static" / name).read_bytes() for name in _STATIC_TYPES}
    app.jinja_env.filters["clock"] = _clock
    app.jinja_env.filters["duration"] = _duration

    @app.before_request
    def _check_host():
        if allowed_hosts is not None and (request.host.rsplit(":", 1)[0].strip("[]") not in allowed_hosts):
            abort(400, description="unexpected Host header")

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @app.errorhandler(HTTPException)
    def _error(e: HTTPException):
        if request.method == "POST":
            return jsonify(error=e.description), e.code
        return Response(f"{e.code} {e.name}: {e.description}\n", e.code, mimetype="text/plain")

    @app.get("/")
    def index():
        return Response("medsd reader study: open your personal link.\n", mimetype="text/plain")

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in static:
            abort(404, description="no such file")
        return Response(static[name], mimetype=_STATIC_TYPES[name])

    _reader_routes(app, state)
    _coordinator_routes(app, state)
    return app


def _reader_routes(app: Flask, state: ReaderApp) -> None:
    @app.get("/r/<token>/")
    def resume(token: str):
        reader = state.reader(token)
        if reader.submitted_at is not None:
            return render_template("done.html", reader=reader, total=len(reader.order))
        answered = state.db.answers(reader.id)
        todo = [i for i, c in enumerate(reader.order, 1) if c not in answered]
        return redirect(f"/r/{token}/case/{todo[0]}" if todo else f"/r/{token}/review", 303)

    @app.get("/r/<token>/case/<int:pos>")
    def case_page(token: str, pos: int):
        reader = state.reader(token)
        if reader.submitted_at is not None:
            return redirect(f"/r/{token}/", 303)
        if not 1 <= pos <= len(reader.order):
            abort(404, description=f"case {pos} does not exist; cases are 1..{len(reader.order)}")
        return render_template("case.html", **_case_context(state, reader, token, pos))

    @app.get("/r/<token>/review")
    def review(token: str):
        reader = state.reader(token)
        if reader.submitted_at is not None:
            return redirect(f"/r/{token}/", 303)
        answered = state.db.answers(reader.id)
        rows = [(i, answered.get(c)) for i, c in enumerate(reader.order, 1)]
        return render_template(
            "review.html", reader=reader, token=token, rows=rows, n_answered=len(answered),
            total=len(reader.order), csrf=state.csrf(reader),
        )  # fmt: skip

    @app.get("/r/<token>/image/<image_id>")
    def image(token: str, image_id: str):
        reader = state.reader(token)
        found = state.find_image(reader, image_id)
        if found is None:
            abort(404, description="no such image")
        return Response(state.study.image_png(*found), mimetype="image/png")

    @app.post("/r/<token>/answer")
    def answer(token: str):
        reader = state.reader(token)
        body = state.check_same_origin_json(reader)
        fields = valid_answer(body, state.study.choices)
        case_id = state.find_case(reader, body.get("case"))
        if case_id is None:
            abort(400, description="unknown case id")
        try:
            state.db.save_answer(reader.id, case_id, **fields)
        except ReaderStudyDBError as e:
            abort(409, description=str(e))
        return jsonify(ok=True, answered=len(state.db.answers(reader.id)), total=len(reader.order))

    @app.post("/r/<token>/submit")
    def submit(token: str):
        reader = state.reader(token)
        if state.check_same_origin_json(reader):
            abort(400, description="expected an empty JSON object")
        try:
            state.db.submit(reader.id)
        except ReaderStudyDBError as e:
            abort(409, description=str(e))
        return jsonify(ok=True)


def _case_context(state: ReaderApp, reader: Reader, token: str, pos: int) -> dict:
    case_id = reader.order[pos - 1]
    answered = state.db.answers(reader.id)
    base = f"/r/{token}"
    return {
        "reader": reader,
        "pos": pos,
        "total": len(reader.order),
        "n_answered": len(answered),
        "case_token": state.case_id_token(reader, case_id),
        "images": [f"{base}/image/{state.image_id(reader, case_id, s)}" for s in range(state.sides)],
        "labels": ["A", "B"] if state.sides == 2 else [""],
        "choices": [(c, KEYS[c]) for c in state.study.choices],
        "design": state.study.design,
        "current": answered.get(case_id) or {},
        "csrf": state.csrf(reader),
        "answer_url": f"{base}/answer",
        "prev_url": f"{base}/case/{pos - 1}" if pos > 1 else "",
        "next_url": f"{base}/case/{pos + 1}" if pos < len(reader.order) else f"{base}/review",
        "review_url": f"{base}/review",
    }


def _coordinator_routes(app: Flask, state: ReaderApp) -> None:
    want = hashlib.sha256(state.coordinator_token.encode()).digest()

    @app.get("/c/<token>/")
    def coordinator(token: str):
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), want):
            abort(403, description="This coordinator link is not valid (it changes at every server start).")
        rows = state.db.progress()
        return render_template(
            "coordinator.html", rows=rows, design=state.study.design, n_cases=len(state.study.case_ids),
            n_done=sum(r["submitted_at"] is not None for r in rows), now=time.time(),
        )  # fmt: skip


def _clock(t: float | None) -> str:
    return "—" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {s:02d}s"


def make_server(
    study_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    threads: int = 4,
    coordinator_token: str | None = None,
):
    """A waitress server for the study (not started: call ``.run()``); ``port=0`` picks a free port
    (``.effective_port``). Bound to a loopback address, only loopback Host headers are accepted."""
    from waitress import create_server

    hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None
    app = create_reader_app(study_dir, coordinator_token, allowed_hosts=hosts)
    server = create_server(app, host=host, port=port, threads=threads, ident="medsd", asyncore_use_poll=True)
    return server, app
