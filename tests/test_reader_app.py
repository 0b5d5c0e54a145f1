"""The reader-study web app without a browser: readers, answers in SQLite, resume, submit, scoring from the
database against the same answers as CSV, and the coordinator page (Flask test client; the live server in
test_reader_app_security.py and test_reader_app_browser.py)."""

from __future__ import annotations

import csv
import json
import re
import sqlite3

import pytest
from reader_app_fixtures import make_study, page_data, read_key

from medsd.cli import main
from medsd.metrics.reader_study import score_reader_study
from medsd.reader_app.db import SCHEMA_VERSION, ReaderStudyDB, ReaderStudyDBError
from medsd.reader_app.server import create_reader_app
from medsd.reader_app.study import StudyCases, StudyFolderError

COORD = "coordinator-token-0123456789"


def _db(study) -> ReaderStudyDB:
    s = StudyCases(study)
    return ReaderStudyDB(s.db_path, s.case_ids)


def _answer_for(case_id: str, truth: str, i: int, design: str) -> str:
    """A made-up reader: right on most cases, wrong on every third, unsure on every fifth."""
    if i % 5 == 4:
        return "unsure"
    if design == "2afc":
        return truth if i % 3 else ("B" if truth == "A" else "A")
    return truth if i % 3 else ("fake" if truth == "real" else "real")


def answer_case(client, token: str, pos: int, answer: str, **extra):
    html = client.get(f"/r/{token}/case/{pos}").get_data(as_text=True)
    d = page_data(html)
    body = {"case": d["case"], "answer": answer, "seconds": 1.5, **extra}
    return client.post(f"/r/{token}/answer", json=body, headers={"X-CSRF-Token": d["csrf"]})


def test_readers_get_tokens_seeded_orders_and_a_versioned_wal_database(tmp_path):
    study = make_study(tmp_path / "s")
    db = _db(study)
    t1, t2 = db.add_reader("alice"), db.add_reader("bob")
    a, b = db.reader_by_token(t1), db.reader_by_token(t2)
    assert (a.name, b.name) == ("alice", "bob") and t1 != t2
    ids = StudyCases(study).case_ids
    assert sorted(a.order) == sorted(ids) == sorted(b.order)
    import numpy as np

    assert list(a.order) == [str(c) for c in np.random.default_rng(a.order_seed).permutation(ids)]
    raw = (study / "reader_study.sqlite").read_bytes()
    assert t1.encode() not in raw  # only the hash is stored
    con = sqlite3.connect(study / "reader_study.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    with pytest.raises(ReaderStudyDBError, match="exists; pass --new_link"):
        db.add_reader("alice")
    with pytest.raises(ReaderStudyDBError, match="reader name"):
        db.add_reader("../x")
    t3 = db.add_reader("alice", new_link=True)
    assert db.reader_by_token(t1) is None and db.reader_by_token(t3).order == a.order
    assert db.reader_by_token("x" * 200) is None and db.reader_by_token(t1 + "'; --") is None


def test_a_database_of_another_study_or_a_newer_schema_is_refused(tmp_path):
    study = make_study(tmp_path / "s")
    _db(study).add_reader("alice")
    with pytest.raises(ReaderStudyDBError, match="another study"):
        ReaderStudyDB(study / "reader_study.sqlite", ["case_0001"])
    con = sqlite3.connect(study / "reader_study.sqlite")
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(ReaderStudyDBError, match="newer than this medsd"):
        _db(study)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyFolderError, match="study.json not found"):
        StudyCases(tmp_path / "empty")


@pytest.mark.parametrize("design", ["mixed", "all_synthetic", "2afc"])
def test_a_reader_answers_resumes_changes_and_submits_and_scores_match_csv(tmp_path, design, capsys):
    study = make_study(tmp_path / "s", design=design, n=3)
    db = _db(study)
    token, other = db.add_reader("alice"), db.add_reader("bob")
    client = create_reader_app(study, COORD).test_client()
    key = read_key(study)
    order = db.reader_by_token(token).order
    given = {c: _answer_for(c, key[c], i, design) for i, c in enumerate(order)}
    first = client.get(f"/r/{token}/")
    assert first.status_code == 303 and first.headers["Location"].endswith(f"/r/{token}/case/1")
    half = len(order) // 2
    for pos in range(1, half + 1):
        r = answer_case(client, token, pos, given[order[pos - 1]], findings=f"note {pos}", confidence=3)
        assert r.status_code == 200 and r.get_json()["answered"] == pos
    # a new session (reload, other browser) resumes at the first unanswered case
    again = create_reader_app(study, COORD).test_client().get(f"/r/{token}/")
    assert again.headers["Location"].endswith(f"/case/{half + 1}")
    page = client.get(f"/r/{token}/case/{half + 1}").get_data(as_text=True)
    assert f"Case {half + 1} of {len(order)}" in page
    for pos in range(half + 1, len(order) + 1):
        assert answer_case(client, token, pos, given[order[pos - 1]]).status_code == 200
    # going back to change an answer: one row, the new answer, time added up
    wrong = "unsure" if given[order[0]] != "unsure" else choices_first(design)
    assert answer_case(client, token, 1, wrong, findings="changed my mind").status_code == 200
    assert answer_case(client, token, 1, given[order[0]], findings="note 1", confidence=3).status_code == 200
    stored = db.answers(db.reader_by_token(token).id)
    assert {c: a["answer"] for c, a in stored.items()} == given
    assert stored[order[0]]["n_saves"] == 3 and stored[order[0]]["seconds"] == pytest.approx(4.5)
    assert client.get(f"/r/{token}/").headers["Location"].endswith("/review")
    d = page_data(client.get(f"/r/{token}/review").get_data(as_text=True))
    assert client.post(f"/r/{token}/submit", json={}, headers={"X-CSRF-Token": d["csrf"]}).status_code == 200
    assert "were submitted" in client.get(f"/r/{token}/").get_data(as_text=True)
    late = client.post(
        f"/r/{token}/answer", json={"case": "x", "answer": "unsure"}, headers={"X-CSRF-Token": d["csrf"]}
    )
    assert late.status_code in (400, 409)
    assert {c: a["answer"] for c, a in db.answers(db.reader_by_token(token).id).items()} == given

    # scores from the database == scores of the same answers written by hand as a CSV
    with open(tmp_path / "alice.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "answer", "findings"])
        w.writerows(
            [(c, given[c], f"note {order.index(c) + 1}" if order.index(c) < half else "") for c in order]
        )
    expected = score_reader_study(study / "key.csv", [tmp_path / "alice.csv"])
    assert main(["reader_study", "score", "--key", str(study / "key.csv"), "--db", str(study / "reader_study.sqlite"),
                 "--out", str(tmp_path / "db.json")]) == 0  # fmt: skip
    assert "not scored (not submitted" in capsys.readouterr().err  # bob has not submitted
    assert (tmp_path / "db.json").read_text() == json.dumps(expected, indent=2)  # NaN-safe: compare the text
    # the exported CSVs are read by the CSV scoring and give the same scores
    assert main(["reader_study", "export_answers", str(study), "--out", str(tmp_path / "csv")]) == 0
    exported = score_reader_study(study / "key.csv", [tmp_path / "csv" / "alice.csv"])
    assert json.dumps(exported) == json.dumps(expected)
    assert not (tmp_path / "csv" / "bob.csv").exists() and other


def choices_first(design: str) -> str:
    return "A" if design == "2afc" else "real"


def test_submit_is_refused_until_every_case_is_answered_and_export_never_clobbers(tmp_path, capsys):
    study = make_study(tmp_path / "s", n=2)
    db = _db(study)
    token = db.add_reader("carol")
    client = create_reader_app(study, COORD).test_client()
    assert answer_case(client, token, 1, "real").status_code == 200
    d = page_data(client.get(f"/r/{token}/review").get_data(as_text=True))
    r = client.post(f"/r/{token}/submit", json={}, headers={"X-CSRF-Token": d["csrf"]})
    assert r.status_code == 409 and "3 case(s) still unanswered" in r.get_json()["error"]
    assert db.reader_by_token(token).submitted_at is None
    out = tmp_path / "csv"
    args = ["reader_study", "export_answers", str(study), "--out", str(out), "--include_unsubmitted"]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "carol.csv")))
    assert len(rows) == 4 and sum(r["answer"] == "real" for r in rows) == 1
    (out / "carol.csv").write_text("mine")
    assert main(args) == 2 and "carol.csv already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "carol.csv").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0 and (out / "carol.csv").read_text().startswith("case_id,stratum")
    assert main(["reader_study", "score", "--key", str(study / "key.csv"), "--db", str(study / "reader_study.sqlite")]) == 2  # fmt: skip
    assert "no reader has submitted yet" in capsys.readouterr().err


def test_the_coordinator_page_shows_who_has_finished_and_nothing_else(tmp_path):
    study = make_study(tmp_path / "s", n=2)
    db = _db(study)
    t_done, _ = db.add_reader("dora"), db.add_reader("eve")
    client = create_reader_app(study, COORD).test_client()
    order = db.reader_by_token(t_done).order
    for pos in range(1, len(order) + 1):
        answer_case(client, t_done, pos, "fake", findings="dora-private-finding")
    db.submit(db.reader_by_token(t_done).id)
    assert client.get("/c/wrong-token-0123456789/").status_code == 403
    page = client.get(f"/c/{COORD}/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "1 of 2 readers finished" in html
    rows = re.findall(r"<tr>\s*<td>(\w+)</td>.*?</tr>", html, re.S)
    assert rows == ["dora", "eve"]
    assert "submitted" in html and "in progress" in html and "4 of 4" in html and "0 of 4" in html
    assert "dora-private-finding" not in html and "patient_" not in html and "sample_" not in html


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "{tmp}/nope"], "STUDY_DIR {tmp}/nope does not exist"),
        (["serve", "{tmp}"], "study.json not found: not a folder written by `medsd reader_study export`"),
        (["serve", "{study}", "--port", "70000"], "--port: expected a number <= 65535"),
        (["add_reader", "{study}", "a b"], "reader name 'a b': use 1-64 letters"),
        (["score", "--key", "{study}/key.csv"], "give --answers CSV files, --db"),
        (
            ["score", "--key", "{study}/key.csv", "--db", "{study}/key.csv"],
            "key.csv: not a reader-study database",
        ),
        (["export_answers", "{study}", "--out", "{tmp}/csv"], "no readers to export (none has submitted)"),
    ],
)
def test_bad_command_lines_are_one_line_errors(tmp_path, capsys, argv, message):
    study = make_study(tmp_path / "s", n=2)
    fill = {"tmp": str(tmp_path), "study": str(study)}
    code = main(["reader_study", *[a.format(**fill) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message.format(**fill) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "csv").exists()
