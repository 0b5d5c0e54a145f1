"""The cases of a study folder written by ``medsd reader_study export``, as the web app serves them.

Only ``study.json`` (the design) and ``answer_sheet.csv`` (case ids, strata) are read: never ``key.csv``. Every
image is re-encoded the same way (8-bit greyscale PNG, no metadata, no compression: equal sizes give equal byte
lengths), so nothing in a response tells a real case from a synthetic one.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsd.data.io import read_image
from medsd.data.writers import png8_bytes

DB_NAME = "reader_study.sqlite"
CASE_ID = re.compile(r"(case|pair)_[0-9]{4,6}")
CHOICES = {
    "mixed": ("real", "fake", "unsure"),
    "all_synthetic": ("real", "fake", "unsure"),
    "2afc": ("A", "B", "unsure"),
}


class StudyFolderError(ValueError):
    """A study folder the web app cannot serve (missing files, a bad case id); the message names the file."""


@dataclass(frozen=True)
class StudyCase:
    """One case: its id and stratum, and its image files (one, or A and B of a 2afc pair)."""

    case_id: str
    stratum: str
    files: tuple[Path, ...]


class StudyCases:
    """The cases of ``study_dir`` (design, ids in answer-sheet order, image files) and their blinded encoding."""

    def __init__(self, study_dir: str | Path):
        self.root = Path(study_dir).resolve()
        self.design = _read_design(self.root)
        self.choices = CHOICES[self.design]
        self.cases = _read_cases(self.root, self.design)
        self._by_id = {c.case_id: c for c in self.cases}

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def case(self, case_id: str) -> StudyCase:
        return self._by_id[case_id]

    def image_png(self, case_id: str, side: int = 0) -> bytes:
        """The blinded PNG of image ``side`` (0, or 1 for B of a pair) of a case of this study."""
        return _blinded_png(str(self._by_id[case_id].files[side]))


def _read_design(root: Path) -> str:
    info_path = root / "study.json"
    if not root.is_dir():
        raise StudyFolderError(f"{root}: study folder not found")
    if not info_path.is_file():
        raise StudyFolderError(f"{info_path} not found: not a folder written by `medsd reader_study export`")
    try:
        design = json.loads(info_path.read_text()).get("design")
    except (json.JSONDecodeError, AttributeError):
        raise StudyFolderError(f"{info_path}: not a JSON object with a 'design' field") from None
    if design not in CHOICES:
        raise StudyFolderError(f"{info_path}: design {design!r} is not one of {sorted(CHOICES)}")
    return design


def _read_cases(root: Path, design: str) -> list[StudyCase]:
    sheet = root / "answer_sheet.csv"
    if not sheet.is_file():
        raise StudyFolderError(f"{sheet} not found: not a folder written by `medsd reader_study export`")
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    cases, seen = [], set()
    for i, row in enumerate(rows, 2):
        cid = (row.get("case_id") or "").strip()
        if not CASE_ID.fullmatch(cid) or cid in seen:
            raise StudyFolderError(f"{sheet}:{i}: case_id {cid!r} is not a new case_NNNN / pair_NNNN id")
        seen.add(cid)
        if design == "2afc":
            files = (root / "pairs" / f"{cid}_A.png", root / "pairs" / f"{cid}_B.png")
        else:
            files = (root / "cases" / f"{cid}.png",)
        for p in files:
            if not p.is_file():
                raise StudyFolderError(f"{p}: image of case {cid} not found")
        cases.append(StudyCase(cid, (row.get("stratum") or "all").strip(), files))
    if not cases:
        raise StudyFolderError(f"{sheet}: no cases")
    return cases


@lru_cache(maxsize=256)
def _blinded_png(path: str) -> bytes:
    img = read_image(path)
    depth = int(img.meta.get("bit_depth") or 8)
    top = float(2**depth - 1) if depth in (8, 16) else max(float(np.max(img.array)), 1.0)
    return png8_bytes(np.clip(img.array / top, 0.0, 1.0), name=Path(path).name)
