"""Readers and their answers in SQLite: WAL journal, ``synchronous=FULL``, one transaction per answer.

An answer is committed before the server replies, so a closed browser, a killed server or a power cut loses no
answer that was acknowledged. The schema is versioned (``PRAGMA user_version``); a database of another study
(other case ids) or of a newer schema is refused. Reader tokens are stored as SHA-256 hashes and compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
READER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE readers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    order_seed INTEGER NOT NULL,
    case_order TEXT NOT NULL,
    created_at REAL NOT NULL,
    submitted_at REAL
);
CREATE TABLE answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    confidence INTEGER,
    findings TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL DEFAULT 0,
    n_saves INTEGER NOT NULL DEFAULT 1,
    answered_at REAL NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
"""


class ReaderStudyDBError(ValueError):
    """A refused database operation (unknown reader, submitted answers, another study's database)."""


@dataclass(frozen=True)
class Reader:
    """A reader: database id, name, case order (seeded, recorded) and when they submitted (None: not yet)."""

    id: int
    name: str
    order: tuple[str, ...]
    order_seed: int
    submitted_at: float | None


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fingerprint(case_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(case_ids).encode()).hexdigest()


class ReaderStudyDB:
    """The answers database of one study (``STUDY/reader_study.sqlite``), created on first use."""

    def __init__(self, path: str | Path, case_ids: list[str]):
        self.path = Path(path)
        self.case_ids = list(case_ids)
        with self._connect() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create(con)
            elif version > SCHEMA_VERSION:
                raise ReaderStudyDBError(
                    f"{self.path}: schema version {version} is newer than this medsd's ({SCHEMA_VERSION})"
                )
            if self._meta(con, "case_ids_sha256") != _fingerprint(self.case_ids):
                raise ReaderStudyDBError(f"{self.path}: database of another study (its case ids differ)")

    @classmethod
    def open_existing(cls, path: str | Path) -> ReaderStudyDB:
        """Open a study's database for reading answers (e.g. scoring) without its study folder."""
        path = Path(path)
        if not path.is_file():
            raise ReaderStudyDBError(f"{path}: database not found")
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'case_ids'").fetchone()
            finally:
                con.close()
        except sqlite3.DatabaseError:
            raise ReaderStudyDBError(f"{path}: not a reader-study database") from None
        if row is None:
            raise ReaderStudyDBError(f"{path}: not a reader-study database")
        return cls(path, json.loads(row[0]))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _create(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have won the race
            for statement in filter(str.strip, _SCHEMA.split(";")):
                con.execute(statement)
            meta = {
                "case_ids_sha256": _fingerprint(self.case_ids),
                "case_ids": json.dumps(self.case_ids),
                "secret": secrets.token_hex(32),
            }
            con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        con.execute("COMMIT")

    @staticmethod
    def _meta(con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def secret(self) -> bytes:
        """The study's random server secret (for opaque case ids and form tokens)."""
        with self._connect() as con:
            return bytes.fromhex(self._meta(con, "secret") or "")

    # -- readers -----------------------------------------------------------------------------------------------

    def add_reader(self, name: str, new_link: bool = False) -> str:
        """Add reader ``name`` with a seeded random case order; returns their new secret token (shown once).

        ``new_link``: give an existing reader a new token (the old link stops working; answers are kept).
        """
        if not READER_NAME.fullmatch(name):
            raise ReaderStudyDBError(
                f"reader name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names their CSV file)"
            )
        token = secrets.token_urlsafe(24)
        with self._transaction() as con:
            exists = con.execute("SELECT id FROM readers WHERE name = ?", (name,)).fetchone()
            if exists and not new_link:
                raise ReaderStudyDBError(f"reader {name!r} exists; pass --new_link to replace their link")
            if exists:
                con.execute("UPDATE readers SET token_sha256 = ? WHERE id = ?", (_sha256(token), exists[0]))
                return token
            seed = secrets.randbits(32)
            order = [str(c) for c in np.random.default_rng(seed).permutation(self.case_ids)]
            con.execute(
                "INSERT INTO readers (name, token_sha256, order_seed, case_order, created_at) VALUES (?,?,?,?,?)",
                (name, _sha256(token), seed, json.dumps(order), time.time()),
            )
        return token

    def reader_by_token(self, token: str) -> Reader | None:
        """The reader holding ``token``, or None; every stored hash is compared in constant time."""
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            return None
        given = _sha256(token)
        with self._connect() as con:
            rows = con.execute("SELECT id, token_sha256 FROM readers").fetchall()
        found = None
        for rid, stored in rows:
            if hmac.compare_digest(given, stored):
                found = rid
        return None if found is None else self.reader(found)

    def reader(self, reader_id: int) -> Reader:
        with self._connect() as con:
            row = con.execute(
                "SELECT id, name, case_order, order_seed, submitted_at FROM readers WHERE id = ?",
                (reader_id,),
            ).fetchone()
        if row is None:
            raise ReaderStudyDBError(f"no reader with id {reader_id}")
        return Reader(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])

    def readers(self) -> list[Reader]:
        with self._connect() as con:
            ids = [r[0] for r in con.execute("SELECT id FROM readers ORDER BY name")]
        return [self.reader(i) for i in ids]

    # -- answers -----------------------------------------------------------------------------------------------

    def save_answer(
        self,
        reader_id: int,
        case_id: str,
        answer: str,
        confidence: int | None = None,
        findings: str = "",
        seconds: float = 0.0,
    ) -> None:
        """Record (or change) one answer in its own committed transaction; ``seconds`` adds to the case's time."""
        if case_id not in self.case_ids:
            raise ReaderStudyDBError(f"case {case_id!r} is not in this study")
        with self._transaction() as con:
            row = con.execute("SELECT submitted_at FROM readers WHERE id = ?", (reader_id,)).fetchone()
            if row is None:
                raise ReaderStudyDBError(f"no reader with id {reader_id}")
            if row[0] is not None:
                raise ReaderStudyDBError("answers were submitted and can no longer be changed")
            con.execute(
                "INSERT INTO answers (reader_id, case_id, answer, confidence, findings, seconds, answered_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (reader_id, case_id) DO UPDATE SET answer = excluded.answer, "
                "confidence = excluded.confidence, findings = excluded.findings, "
                "seconds = seconds + excluded.seconds, n_saves = n_saves + 1, answered_at = excluded.answered_at",
                (reader_id, case_id, answer, confidence, findings, float(seconds), time.time()),
            )

    def answers(self, reader_id: int) -> dict[str, dict]:
        """``{case_id: {answer, confidence, findings, seconds, n_saves, answered_at}}`` of one reader."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                "SELECT case_id, answer, confidence, findings, seconds, n_saves, answered_at FROM answers "
                "WHERE reader_id = ?",
                (reader_id,),
            ).fetchall()
        return {r["case_id"]: {k: r[k] for k in r.keys() if k != "case_id"} for r in rows}

    def submit(self, reader_id: int) -> None:
        """Mark a reader's answers final; refused until every case is answered."""
        with self._transaction() as con:
            n = con.execute("SELECT COUNT(*) FROM answers WHERE reader_id = ?", (reader_id,)).fetchone()[0]
            if n < len(self.case_ids):
                raise ReaderStudyDBError(f"{len(self.case_ids) - n} case(s) still unanswered")
            con.execute(
                "UPDATE readers SET submitted_at = ? WHERE id = ? AND submitted_at IS NULL",
                (time.time(), reader_id),
            )

    def progress(self) -> list[dict]:
        """Per reader: name, answered, total, seconds spent, last answer time, submitted time."""
        out = []
        for r in self.readers():
            ans = self.answers(r.id)
            out.append(
                {
                    "name": r.name,
                    "answered": len(ans),
                    "total": len(self.case_ids),
                    "seconds": float(sum(a["seconds"] for a in ans.values())),
                    "last_answer_at": max((a["answered_at"] for a in ans.values()), default=None),
                    "submitted_at": r.submitted_at,
                }
            )
        return out

    def sheets(self, submitted_only: bool = True) -> dict[str, dict[str, tuple[str, str]]]:
        """``{reader: {case_id: (answer, findings)}}``, what :func:`medsd.metrics.score_answer_sheets` takes."""
        return {
            r.name: {c: (a["answer"], a["findings"]) for c, a in self.answers(r.id).items()}
            for r in self.readers()
            if r.submitted_at is not None or not submitted_only
        }
