"""Listing the images of a folder or a metadata CSV: file walks, CSV decoding and path confinement.

Every problem with the listing itself (an unreadable or non-UTF-8 CSV, a missing column, a path that leaves
the data folder) raises ``MedImageError`` naming the CSV, the row and what was expected.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import MedImageError, one_line
from .io import count_frames

# files whose frames are counted when listing (multi-frame DICOM, multi-page TIFF, NIfTI volumes)
_MULTI_FRAME = (".dcm", ".dicom", ".ima", ".tif", ".tiff", ".nii", ".nii.gz")


def walk_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Every non-hidden entry under ``root`` whose name ends with one of ``extensions`` and is not a folder,
    sorted. Linked folders are followed once (a link back to a parent is not walked again); broken links,
    link loops and pipes named like images are listed, so that reading them reports the problem."""
    exts = tuple(e.lower() for e in extensions)
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    for top, dirs, files in os.walk(root, onerror=_walk_error, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(exts):
                out.append(Path(top) / name)
    return sorted(out)


def _walk_error(e: OSError) -> None:
    raise MedImageError(
        f"{e.filename}: cannot list folder ({e.strerror}); expected a readable folder of images"
    )


def other_files_hint(root: Path, limit: int = 3) -> str:
    """`` (found N other files, e.g. a.txt, b.json)`` for an error about a folder without images."""
    names = []
    for _top, _dirs, files in os.walk(root):
        names.extend(f for f in files if not f.startswith("."))
        if len(names) > 100:
            break
    if not names:
        return " (the folder is empty)"
    return f" (found {len(names)} other file(s), e.g. {', '.join(sorted(names)[:limit])})"


def frames_of(path: Path) -> list[int | None]:
    """``frame`` values of the 2-D images in ``path`` (``[None]`` for plain single images)."""
    if path.name.lower().endswith(_MULTI_FRAME):
        return count_frames(path)
    return [None]


def read_csv_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header columns, [(line number, row dict)]) of a UTF-8 CSV; one-line errors for anything else."""
    try:
        raw = csv_path.read_bytes()
    except OSError as e:
        raise MedImageError(
            f"{csv_path}: cannot read CSV ({one_line(e)}); expected a readable UTF-8 file"
        ) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise MedImageError(f"{csv_path}: UTF-16 text; expected a UTF-8 CSV (re-save it as UTF-8)")
    if b"\x00" in raw[:65536]:
        raise MedImageError(f"{csv_path}: binary data (NUL bytes), not CSV text; expected a UTF-8 CSV")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MedImageError(
            f"{csv_path}: line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 (latin-1 or Windows-1252?); "
            "expected a UTF-8 CSV (re-save it as UTF-8)"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict]] = []
    try:
        columns = list(reader.fieldnames or [])
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise MedImageError(
            f"{csv_path}: line {reader.line_num}: malformed CSV ({one_line(e)}); expected comma-separated "
            "values with a header row"
        ) from None
    if not columns:
        raise MedImageError(f"{csv_path}: empty CSV (no header row); expected a header naming the columns")
    return columns, rows


def check_columns(where: str, columns: Sequence[str], wanted: dict[str, str | None]) -> None:
    """Raise naming the missing column, its role and the columns found."""
    for role, col in wanted.items():
        if col is not None and col not in columns:
            raise MedImageError(
                f"{where}: column {col!r} ({role}) not found; available columns: {', '.join(map(str, columns))}"
            )


def confined_path(csv_path: Path, line: int, root: Path, name: str, allow_outside: bool) -> str:
    """``name`` (a CSV cell) as a path under ``root``; a path leaving ``root`` (``../x.png``, an absolute
    path elsewhere) raises unless ``allow_outside``. The check is on the written path, so links inside
    ``root`` that point elsewhere (a mounted image folder) are allowed."""
    p = Path(name)
    full = p if p.is_absolute() else root / p
    if not allow_outside:
        base = os.path.normpath(os.path.abspath(root))
        target = os.path.normpath(os.path.abspath(full))
        if os.path.commonpath([base, target]) != base:
            raise MedImageError(
                f"{csv_path}: line {line}: image path {name!r} is outside the data folder {base}; expected a "
                "path inside it (--allow_outside_root allows it)"
            )
    return str(full)
