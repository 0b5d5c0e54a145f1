"""Blinding and security of the reader-study web app, over real HTTP to the waitress server on 127.0.0.1: no
response holds the key or a source name, every case image is served identically, and bad tokens, ids, paths,
cross-site and malformed requests get a 4xx and leave the database unchanged."""

from __future__ import annotations

import json
import re
import struct
import zlib
from http.client import HTTPConnection

import pytest
from reader_app_fixtures import db_rows, http, key_secrets, live_server, make_study, page_data

from medsd.reader_app.db import ReaderStudyDB
from medsd.reader_app.study import StudyCases

COORD = "coordinator-token-0123456789"


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n : i + 12 + n])[0] == zlib.crc32(kind + body)
        out.append((kind, body))
        i += 12 + n
    return out


def _study_with_readers(tmp_path, design):
    study = make_study(tmp_path / "s", design=design, n=3)
    cases = StudyCases(study)
    db = ReaderStudyDB(cases.db_path, cases.case_ids)
    return study, db, db.add_reader("alice"), db.add_reader("bob")


def _crawl(base: str, token: str, n: int) -> list[tuple[str, int, dict, bytes]]:
    """Every page, script, style sheet and image a reader's browser can fetch."""
    urls = [
        f"/r/{token}/",
        f"/r/{token}/review",
        "/static/reader.js",
        "/static/reader.css",
        "/",
    ]
    urls += [f"/r/{token}/case/{i}" for i in range(1, n + 1)]
    out = []
    for u in urls:
        status, headers, body = http(base + u)
        out.append((u, status, headers, body))
        out += [(m, *http(base + m)) for m in re.findall(rb'data-src="([^"]+)"', body) for m in [m.decode()]]
    return out


@pytest.mark.parametrize("design", ["mixed", "2afc"])
def test_no_response_holds_the_key_and_every_case_is_served_identically(tmp_path, design):
    study, db, alice, _ = _study_with_readers(tmp_path, design)
    files = sorted((study / ("pairs" if design == "2afc" else "cases")).glob("*.png"))
    assert len({f.stat().st_size for f in files}) > 1  # the exported files do differ in size
    forbidden = key_secrets(study) + ["key.csv", str(study), "truth"]
    assert any("patient_" in s for s in forbidden)
    with live_server(study, COORD) as base:
        responses = _crawl(base, alice, len(files) // (2 if design == "2afc" else 1))
        coordinator = http(f"{base}/c/{COORD}/")
    assert coordinator[0] == 200 and not [s for s in key_secrets(study) if s in coordinator[2].decode()]
    images = list({u: (u, h, b) for u, s, h, b in responses if "/image/" in u}.values())
    assert len(images) == len(files) and all(s == 200 for _, s, _, _ in responses)
    for url, _, headers, body in responses:
        text = body.decode("latin-1") + url + json.dumps(headers)
        leaked = [s for s in forbidden if s in text]
        assert not leaked, f"{url} leaks {leaked}"
        assert (
            headers.get("Cache-Control") == "no-store"
            and "default-src 'none'" in headers["Content-Security-Policy"]
        )
    same = [{k: v for k, v in h.items() if k != "Date"} for _, h, _ in images]
    assert all(h == same[0] for h in same) and same[0]["Content-Type"] == "image/png"
    assert "Last-Modified" not in same[0] and "ETag" not in same[0]
    lengths = {len(b) for _, _, b in images}
    assert lengths == {int(same[0]["Content-Length"])}  # no file-size tell
    for _, _, body in images:
        chunks = _png_chunks(body)
        assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]  # no text, time or EXIF chunk
        w, h, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
        assert (w, h, depth, colour) == (32, 32, 8, 0)  # 8-bit greyscale, the export's size
    ids = [u.rsplit("/", 1)[1] for u, _, _ in images]
    assert len(set(ids)) == len(ids) and not any("case" in i or "pair" in i for i in ids)


def _raw(base: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    """Status of a request sent exactly as written (no client-side path normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    con = HTTPConnection(host, int(port), timeout=10)
    try:
        con.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            con.putheader(k, v)
        con.endheaders(body)
        return con.getresponse().status
    finally:
        con.close()


def test_bad_tokens_ids_paths_cross_site_and_malformed_requests_are_refused_and_change_nothing(tmp_path):
    study, db, alice, bob = _study_with_readers(tmp_path, "mixed")
    with live_server(study, COORD) as base:
        alice_page = page_data(http(f"{base}/r/{alice}/case/1")[2].decode())
        bob_html = http(f"{base}/r/{bob}/case/1")[2].decode()
        bob_page = page_data(bob_html)
        bob_image = re.search(r'data-src="/r/[^/]+/image/([0-9a-f]+)"', bob_html).group(1)
        ok = {"case": alice_page["case"], "answer": "real", "seconds": 2.0}
        good = {"X-CSRF-Token": alice_page["csrf"]}
        assert http(f"{base}/r/{alice}/answer", ok, good)[0] == 200  # the request the tests below spoil
        before = db_rows(study)
        gets = [
            "/key.csv", "/answer_sheet.csv", "/reader_study.sqlite", "/cases/case_0001.png", "/cases/",
            "/static/../key.csv", "/static/..%2fkey.csv", "/static/%2e%2e/server.py", "/static/server.py",
            "/static/", "/templates/case.html", f"/r/{alice}/image/..%2f..%2fkey.csv",
            f"/r/{alice}/image/../../key.csv", f"/r/{alice}/image/case_0001", f"/r/{alice}/image/{bob_image}",
            f"/r/{alice}/case/0", f"/r/{alice}/case/99", f"/r/{alice}/case/-1", f"/r/{alice}/case/1%00",
            f"/r/{alice}x/", "/r/short/", f"/r/{alice[:-1]}/case/1", f"/c/{COORD}x/", "/c/../key.csv",
        ]  # fmt: skip
        for path in gets:
            status = _raw(base, "GET", path)
            assert 400 <= status < 500, f"GET {path} -> {status}"
        url = f"{base}/r/{alice}/answer"
        posts = [
            (url, ok, {}),  # no CSRF token
            (url, ok, {"X-CSRF-Token": bob_page["csrf"]}),  # another reader's form token
            (url, ok, {**good, "Origin": "http://evil.example"}),  # forged cross-site POST
            (url, ok, {**good, "Sec-Fetch-Site": "cross-site"}),
            (f"{base}/r/{bob}/answer", ok, good),  # alice's case and form token against bob's session
            (f"{base}/r/{alice}/answer", {**ok, "case": bob_page["case"]}, good),  # bob's case id
            (f"{base}/r/{alice}x/answer", ok, good),
            (url, {**ok, "answer": "maybe"}, good),
            (url, {**ok, "answer": "A"}, good),  # a 2afc answer in a mixed study
            (url, {**ok, "confidence": 7}, good),
            (url, {**ok, "confidence": True}, good),
            (url, {**ok, "findings": "x" * 5000}, good),
            (url, {**ok, "seconds": -1}, good),
            (url, {**ok, "seconds": "5"}, good),
            (url, {**ok, "truth": "real"}, good),
            (url, {"answer": "real"}, good),
            (f"{base}/r/{alice}/submit", {}, {}),
            (f"{base}/r/{alice}/submit", {"now": True}, good),
        ]
        for target, body, headers in posts:
            status, _, reply = http(target, body, headers)
            assert 400 <= status < 500 and json.loads(reply)["error"], (target, body, headers, status)
        raw_posts = [
            (
                b"answer=real&case=" + ok["case"].encode(),
                {"Content-Type": "application/x-www-form-urlencoded"},
            ),
            (json.dumps(ok).encode(), {"Content-Type": "text/plain"}),  # a cross-site 'simple' request
            (b"{not json", {"Content-Type": "application/json"}),
            (b"[1, 2]", {"Content-Type": "application/json"}),
            (b'{"case": "' + b"x" * 70000 + b'"}', {"Content-Type": "application/json"}),
        ]
        for body, headers in raw_posts:
            status = _raw(base, "POST", f"/r/{alice}/answer", body, {**good, **headers})
            assert 400 <= status < 500, (body[:40], status)
        assert _raw(base, "GET", f"/r/{alice}/", headers={"Host": "evil.example"}) == 400  # DNS rebinding
        assert _raw(base, "PUT", f"/r/{alice}/answer", json.dumps(ok).encode(), good) == 405
        assert db_rows(study) == before
