"""End to end in headless Chromium (Selenium, the system's chromium + chromedriver): two readers in parallel
answer every case with the mouse and the keyboard, reload mid-way and resume, change an answer, submit; the
viewer shows native pixels and window/level changes them; the scores from the database equal those of the same
answers given as CSV. Skipped, with one line, where Chromium or chromedriver is not installed."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from reader_app_fixtures import live_server, make_study, read_key

from medsd.cli import main
from medsd.metrics.reader_study import score_reader_study
from medsd.reader_app.db import ReaderStudyDB
from medsd.reader_app.study import StudyCases

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def new_browser():
    """A headless Chromium, or a skip naming what is missing."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "browser tests skipped: chromium and chromedriver not found (apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as e:  # a broken install: still one clear line
        pytest.skip(
            f"browser tests skipped: chromium did not start ({type(e).__name__}: {str(e).splitlines()[0]})"
        )


@pytest.fixture
def browsers():
    made = []

    def make():
        made.append(new_browser())
        return made[-1]

    yield make
    for b in made:
        b.quit()


def wait(d, cond, timeout: float = 20):
    return WebDriverWait(d, timeout).until(cond)


def open_case(d, url: str, pos: int, total: int) -> None:
    d.get(url)
    wait(d, lambda d: d.title == f"Case {pos} of {total}")
    wait(d, lambda d: d.execute_script("return document.querySelector('.viewer').dataset.ready") == "1")


def next_case(d, pos: int, total: int, click: bool) -> None:
    if click:
        d.find_element(By.ID, "next").click()
    else:
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    title = f"Case {pos + 1} of {total}" if pos < total else "Review your answers"
    wait(d, lambda d: d.title == title)
    if pos < total:
        wait(d, lambda d: d.execute_script("return document.querySelector('.viewer').dataset.ready") == "1")


def answer_with_mouse(d, value: str, confidence: int, findings: str) -> None:
    d.find_element(By.CSS_SELECTOR, f'.choice[data-value="{value}"]').click()
    wait(d, lambda d: d.find_element(By.ID, "status").text == "Saved.")
    d.find_element(By.CSS_SELECTOR, f'.conf[data-value="{confidence}"]').click()
    d.find_element(By.ID, "findings").send_keys(findings)


def answer_with_keys(d, value: str, confidence: int | None = None) -> None:
    keys = {"real": "r", "fake": "f", "unsure": "u", "A": "a", "B": "b"}[value]
    d.find_element(By.TAG_NAME, "body").send_keys(keys + (str(confidence) if confidence else ""))
    wait(
        d, lambda d: d.find_element(By.CSS_SELECTOR, ".choice.selected").get_attribute("data-value") == value
    )


def centre_pixel(d) -> int:
    return d.execute_script(
        "const c = document.querySelector('canvas.image');"
        "return c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data[0];"
    )


def check_viewer(d) -> None:
    """Native resolution, window/level by drag and preset (the pixels change), zoom."""
    canvas = d.find_element(By.CSS_SELECTOR, "canvas.image")
    assert (canvas.get_property("width"), canvas.get_property("height")) == (32, 32)
    readout = d.find_element(By.ID, "wl")
    assert readout.text == "W 256 L 128 · zoom 1.00"
    before = centre_pixel(d)
    stage = d.find_element(By.CSS_SELECTOR, ".stage")
    ActionChains(d).move_to_element(stage).click_and_hold().move_by_offset(-150, 40).release().perform()
    assert readout.text.startswith("W 106 L 168")
    d.find_element(By.CSS_SELECTOR, '[data-preset="bone"]').click()
    assert readout.text.startswith("W 120 L 190") and centre_pixel(d) != before
    d.find_element(By.CSS_SELECTOR, '[data-zoom="in"]').click()
    assert readout.text.endswith("zoom 1.25")
    d.find_element(By.TAG_NAME, "body").send_keys("0")
    assert readout.text.endswith("zoom 1.00")


def submit(d) -> None:
    button = d.find_element(By.ID, "submit")
    button.click()
    assert "Confirm" in button.text
    button.click()
    wait(d, lambda d: d.title == "Thank you")


def test_two_readers_in_chromium_mouse_keyboard_reload_resume_submit_and_scores_match_csv(tmp_path, browsers):
    study = make_study(tmp_path / "s", n=3)  # 6 cases
    cases = StudyCases(study)
    db = ReaderStudyDB(cases.db_path, cases.case_ids)
    tokens = {"alice": db.add_reader("alice"), "bob": db.add_reader("bob")}
    order = {n: db.reader_by_token(t).order for n, t in tokens.items()}
    key, total = read_key(study), len(cases.case_ids)
    plan = {  # what each reader answers at each position of their own order
        "alice": ["real", "fake", "unsure", "fake", "real", "fake"],
        "bob": ["fake", "fake", "real", "unsure", "fake", "real"],
    }
    alice, bob = browsers(), browsers()
    with live_server(study) as base:
        link = {n: f"{base}/r/{t}/" for n, t in tokens.items()}
        open_case(alice, link["alice"], 1, total)
        open_case(bob, link["bob"], 1, total)
        check_viewer(alice)
        for pos in (1, 2, 3):  # alice: the mouse; bob, in parallel: the keyboard
            answer_with_mouse(alice, plan["alice"][pos - 1], 4, f"alice saw {pos}")
            next_case(alice, pos, total, click=True)
            answer_with_keys(bob, plan["bob"][pos - 1], confidence=2)
            next_case(bob, pos, total, click=False)
        alice.refresh()  # reload mid-way, then open the link afresh: both resume at case 4
        wait(alice, lambda d: d.title == f"Case 4 of {total}")
        open_case(alice, link["alice"], 4, total)
        assert "3 answered" in alice.find_element(By.ID, "progress").text
        for pos in (4, 5, 6):
            answer_with_keys(alice, plan["alice"][pos - 1])
            next_case(alice, pos, total, click=False)
            answer_with_keys(bob, plan["bob"][pos - 1])
            next_case(bob, pos, total, click=pos % 2 == 0)
        # alice goes back to case 2 and changes her answer before submitting
        alice.find_element(By.LINK_TEXT, "2").click()
        wait(alice, lambda d: d.title == f"Case 2 of {total}")
        assert alice.find_element(By.ID, "findings").get_attribute("value") == "alice saw 2"
        plan["alice"][1] = "unsure"
        answer_with_keys(alice, "unsure")
        alice.find_element(By.CSS_SELECTOR, '.nav a[href$="/case/3"]').click()
        wait(alice, lambda d: d.title == f"Case 3 of {total}")
        alice.get(f"{base}/r/{tokens['alice']}/review")
        assert "alice saw 1" in alice.page_source and "not answered" not in alice.page_source
        submit(alice)
        submit(bob)
        alice.get(link["alice"])
        assert "were submitted" in alice.page_source

    given = {n: {order[n][i]: a for i, a in enumerate(plan[n])} for n in plan}
    for n, t in tokens.items():
        stored = db.answers(db.reader_by_token(t).id)
        assert {c: a["answer"] for c, a in stored.items()} == given[n]
        assert all(a["seconds"] > 0 for a in stored.values())
    alice_rows = db.answers(db.reader_by_token(tokens["alice"]).id)
    assert [alice_rows[order["alice"][i]]["confidence"] for i in range(3)] == [4, 4, 4]
    findings = {
        n: {order[n][i]: f"alice saw {i + 1}" for i in range(3)} if n == "alice" else {} for n in plan
    }
    for n in plan:
        with open(tmp_path / f"{n}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "answer", "findings"])
            w.writerows((c, given[n][c], findings[n].get(c, "")) for c in key)
    expected = score_reader_study(study / "key.csv", [tmp_path / "alice.csv", tmp_path / "bob.csv"])
    out = tmp_path / "db_scores.json"
    assert main(["reader_study", "score", "--key", str(study / "key.csv"), "--db", str(cases.db_path), "--out", str(out)]) == 0  # fmt: skip
    assert out.read_text() == json.dumps(expected, indent=2)
    assert expected["readers"]["alice"]["n_cases"] == total and expected["kappa"]


def test_a_2afc_pair_in_chromium_shows_both_images_and_takes_a_b_answers(tmp_path, browsers):
    study = make_study(tmp_path / "s", design="2afc", n=2)
    cases = StudyCases(study)
    db = ReaderStudyDB(cases.db_path, cases.case_ids)
    token = db.add_reader("carol")
    d = browsers()
    with live_server(study) as base:
        open_case(d, f"{base}/r/{token}/", 1, 2)
        assert [c.text for c in d.find_elements(By.CSS_SELECTOR, "figcaption")] == ["A", "B"]
        assert len(d.find_elements(By.CSS_SELECTOR, "canvas.image")) == 2
        assert "Which image is real?" in d.page_source
        answer_with_keys(d, "B")
        next_case(d, 1, 2, click=False)
        answer_with_keys(d, "A", confidence=5)
        next_case(d, 2, 2, click=True)
        submit(d)
    reader = db.reader_by_token(token)
    stored = db.answers(reader.id)
    assert [stored[c]["answer"] for c in reader.order] == ["B", "A"]
    assert stored[reader.order[1]]["confidence"] == 5
