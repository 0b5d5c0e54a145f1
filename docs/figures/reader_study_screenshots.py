"""Make the screenshots of docs/reader_study.md: headless Chromium (Selenium) on a phantom study.

    python docs/figures/reader_study_screenshots.py   # needs chromium + chromedriver and selenium

Writes docs/figures/reader_study_{reader,2afc,review,coordinator}.png. Procedural phantoms only (medsd.data),
never real images.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from medsd.data import chest_phantom, ct_phantom
from medsd.metrics import export_reader_study
from medsd.reader_app.db import ReaderStudyDB
from medsd.reader_app.server import make_server
from medsd.reader_app.study import StudyCases

OUT = Path(__file__).resolve().parent
SIZE = 256


def phantom_studies(root: Path) -> tuple[Path, Path]:
    """An all-synthetic X-ray + CT study (the 'Spot the fake lungs' design) and a 2afc study, from phantoms."""
    xray = np.stack([chest_phantom(SIZE, seed=i) for i in range(20)])
    ct = np.stack([ct_phantom(SIZE, seed=i) for i in range(20)])
    export_reader_study(None, {"xray": xray, "ct": ct}, root / "spot", n_each=20, design="all_synthetic", seed=0)
    real = np.stack([chest_phantom(SIZE, seed=100 + i) for i in range(4)])
    export_reader_study(real, xray[:4], root / "pairs", n_each=4, design="2afc", seed=0)
    return root / "spot", root / "pairs"


def browser() -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,760"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def save(d: webdriver.Chrome, name: str) -> None:
    """A screenshot as a 256-colour PNG (the pages are flat dark UI: small files)."""
    im = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB").quantize(256)
    im.save(OUT / name, optimize=True)
    print(f"{OUT / name}: {(OUT / name).stat().st_size // 1024} KB")


def ready(d: webdriver.Chrome) -> None:
    WebDriverWait(d, 20).until(lambda d: d.execute_script("return document.querySelector('.viewer').dataset.ready"))


def serve(study: Path, coordinator: str):
    server, _ = make_server(study, port=0, coordinator_token=coordinator)
    threading.Thread(target=server.run, daemon=True).start()
    return f"http://127.0.0.1:{server.effective_port}"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="reader-shots-"))
    spot, pairs = phantom_studies(root)
    dbs = {s: ReaderStudyDB(StudyCases(s).db_path, StudyCases(s).case_ids) for s in (spot, pairs)}
    tokens = {name: dbs[spot].add_reader(name) for name in ("radiologist_1", "radiologist_2", "resident_3")}
    carol = dbs[pairs].add_reader("radiologist_1")
    base, base2 = serve(spot, "coordinator-token-for-the-docs"), serve(pairs, "coordinator-token-2")
    order = {n: dbs[spot].reader_by_token(t).order for n, t in tokens.items()}
    for name, n_done in (("radiologist_1", 16), ("radiologist_2", 40), ("resident_3", 6)):
        rid = dbs[spot].reader_by_token(tokens[name]).id
        for i, case_id in enumerate(order[name][:n_done]):
            dbs[spot].save_answer(rid, case_id, ("real", "fake", "unsure")[i % 3], 3, "", 20.0 + i)
    dbs[spot].submit(dbs[spot].reader_by_token(tokens["radiologist_2"]).id)
    d = browser()
    try:
        d.get(f"{base}/r/{tokens['radiologist_1']}/case/17")
        ready(d)
        d.find_element(By.CSS_SELECTOR, '[data-preset="lung"]').click()
        d.find_element(By.CSS_SELECTOR, '[data-zoom="in"]').click()
        d.find_element(By.CSS_SELECTOR, '.choice[data-value="fake"]').click()
        d.find_element(By.CSS_SELECTOR, '.conf[data-value="4"]').click()
        d.find_element(By.ID, "findings").send_keys("Nodules too round and uniform; no vessels in the lungs.")
        d.find_element(By.CSS_SELECTOR, "details.keys").click()
        d.find_element(By.TAG_NAME, "h2").click()
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "status").text == "Saved.")
        save(d, "reader_study_reader.png")
        d.get(f"{base}/r/{tokens['radiologist_1']}/review")
        save(d, "reader_study_review.png")
        d.get(f"{base}/c/coordinator-token-for-the-docs/")
        save(d, "reader_study_coordinator.png")
        d.get(f"{base2}/r/{carol}/")
        ready(d)
        d.find_element(By.CSS_SELECTOR, '.choice[data-value="A"]').click()
        save(d, "reader_study_2afc.png")
    finally:
        d.quit()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
