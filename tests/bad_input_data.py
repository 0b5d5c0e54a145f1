"""Bad inputs: every case is built on the fly in ``tmp_path`` and ends in exactly one of

- ``REFUSE``: a ``MedsdError`` whose message is one line, names the input (``culprit``) and says what was
  expected (one of ``words``);
- ``SKIP``: with ``skip_bad_images`` the culprit is listed as skipped with a reason (one of ``words``) and the
  rest still loads;
- ``LOAD``: a correct load, checked by ``check(result)``.

Cases for the data side of ``tests/test_bad_input.py``: readers, intensity, folders, CSVs, streaming and
evaluation, called through the library API. Add one by appending a ``Case`` to its area's list.
"""

from __future__ import annotations

import csv
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medsd.data import (
    CSVImageDataset,
    DataConfig,
    FolderImageDataset,
    HFImageDataset,
    MinMaxMapping,
    PercentileMapping,
    WindowMapping,
    build_dataset,
    mapping_from_dict,
    read_image,
)
from medsd.errors import MedsdError

REFUSE, SKIP, LOAD = "refuse", "skip", "load"


@dataclass(frozen=True)
class Case:
    """``build(tmp_path)`` writes the inputs and returns the call to make; ``expect`` is REFUSE, SKIP or
    LOAD. REFUSE/SKIP: the message or skip entry must name ``culprit`` and contain one of ``words``
    (case-insensitive). SKIP: the call returns ``(skipped [(path, reason)], number of items loaded)``.
    LOAD: ``check(result)`` asserts the values."""

    name: str
    build: Callable[[Path], Callable[[], Any]]
    expect: str
    culprit: str = ""
    words: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    marks: tuple = ()


def _has_word(text: str, words: tuple[str, ...]) -> bool:
    return not words or any(w.lower() in text.lower() for w in words)


def run_case(case: Case, tmp_path: Path) -> None:
    """Build ``case`` in ``tmp_path``, run it and assert its one expected outcome."""
    call = case.build(tmp_path)
    if case.expect == REFUSE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(MedsdError) as info:
                call()
        msg = str(info.value)
        assert "\n" not in msg, f"not one line: {msg!r}"
        assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
        assert _has_word(msg, case.words), f"none of {case.words} in {msg!r}"
    elif case.expect == SKIP:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            skipped, n_loaded = call()
        hits = [(p, why) for p, why in skipped if case.culprit in p]
        assert hits, f"{case.culprit!r} not in skipped {skipped}"
        assert all(why and "\n" not in why and _has_word(why, case.words) for _, why in hits), hits
        assert n_loaded > 0, "nothing else loaded"
        assert any(case.culprit in str(w.message) for w in caught), "skip not reported in a warning"
    else:
        assert case.expect == LOAD and case.check is not None
        case.check(call())


# ------------------------------------------------------------------------------------------ file factories


def gradient(shape=(32, 32), lo=0.0, hi=255.0) -> np.ndarray:
    h, w = shape
    return lo + (hi - lo) * (np.add.outer(np.arange(h), np.arange(w)) / max(h + w - 2, 1))


def png8(path: Path, shape=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(gradient(shape)).astype(np.uint8)).save(path, format="PNG")
    return path


def png16(path: Path, shape=(32, 32), lo=0, hi=65535) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(gradient(shape, lo, hi)).astype(np.uint16)).save(path, format="PNG")
    return path


def tiff_float(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.float32)).save(path, format="TIFF")
    return path


def save(path: Path, im: Image.Image, fmt: str = "PNG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **kw)
    return path


def palette_image(index: int, rgb: tuple[int, int, int]) -> Image.Image:
    im = Image.new("P", (8, 8), index)
    palette = [0] * 768
    palette[3 * index : 3 * index + 3] = rgb
    im.putpalette(palette)
    return im


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated(path: Path, fmt: str = "PNG") -> Path:
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    save(path, im, fmt)
    data = path.read_bytes()
    return write_bytes(path, data[: len(data) // 2])


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels."""
    save(path, Image.new("L", (1, 1)))
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return write_bytes(path, bytes(data))


def dicom(
    path: Path,
    stored: np.ndarray | None = None,
    *,
    modality: str = "MR",
    window: tuple[float, float] | None = None,
    intercept: float = 0.0,
    pixels: bool = True,
    compressed: bool = False,
    short_pixels: bool = False,
) -> Path:
    """A DICOM written with plain pydicom; ``stored`` is [H, W] or [frames, H, W] uint16."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, generate_uid

    stored = gradient((24, 24), 0, 4000).astype(np.uint16) if stored is None else stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if compressed else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "P1"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", str(intercept)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    if pixels and compressed:
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    elif pixels:
        raw = stored.astype("<u2").tobytes()
        ds.PixelData = raw[: len(raw) // 3] if short_pixels else raw
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.eye(4)), str(path))
    return path


def volume(slices: int = 5, side: int = 24, empty: tuple[int, ...] = ()) -> np.ndarray:
    vol = np.stack([gradient((side, side), 0, 100 + 10 * k) for k in range(slices)], axis=-1)
    for k in empty:
        vol[..., k] = 0.0
    return vol


def write_csv(path: Path, rows: list[dict], columns: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def good_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        png8(root / f"good{i}.png")
    return root


# ------------------------------------------------------------------------------------------ runners


def read(path_fn: Callable[[Path], Path], **kw) -> Callable[[Path], Callable[[], Any]]:
    """build: write one file, then ``read_image`` it."""

    def build(tmp: Path):
        path = path_fn(tmp)
        return lambda: read_image(path, **kw)

    return build


def folder(make: Callable[[Path], Any], resolution: int = 32, **cfg) -> Callable[[Path], Callable[[], Any]]:
    """build: ``make(root)`` fills a folder; the call builds it with ``build_dataset`` and reads every item."""

    def build(tmp: Path):
        root = tmp / "data"
        root.mkdir()
        make(root)
        conf = DataConfig(source="folder", path=str(root), resolution=resolution, split="all", **cfg)

        def call():
            ds, mapping = build_dataset(conf)
            items = [ds[i] for i in range(len(ds))]
            return ds, mapping, items

        return call

    return build


def folder_skip(make: Callable[[Path], Any], resolution: int = 32, **cfg):
    """build: like ``folder`` with ``skip_bad_images``; the call returns (skipped, items loaded)."""
    inner = folder(make, resolution, skip_bad_images=True, **cfg)

    def build(tmp: Path):
        call = inner(tmp)

        def run():
            ds, _, items = call()
            return ds.skipped, len(items)

        return run

    return build


def csv_source(rows_fn: Callable[[Path], Path], **cfg):
    """build: ``rows_fn(tmp)`` writes a CSV (returns its path); the call builds it and reads every item."""

    def build(tmp: Path):
        path = rows_fn(tmp)
        conf = DataConfig(source="csv", path=str(path), resolution=32, split="all", **cfg)

        def call():
            ds, mapping = build_dataset(conf)
            return ds, mapping, [ds[i] for i in range(len(ds))]

        return call

    return build


def pix(result) -> torch.Tensor:
    return torch.stack([it["pixel_values"] for it in result[2]])


def clipped_fraction(x: torch.Tensor) -> float:
    return float(((x <= -1.0) | (x >= 1.0)).float().mean())


# ------------------------------------------------------------------------------------------ checks


def check_8bit_gradient(img) -> None:
    np.testing.assert_array_equal(img.array, np.round(gradient()).astype(np.float32))
    assert img.meta["bit_depth"] == 8


def check_png16(img) -> None:
    assert img.meta["bit_depth"] == 16 and img.array.max() == 65535 and img.array.min() == 0


def check_rgb(img) -> None:
    r, g, b = 200.0, 100.0, 50.0
    assert img.array.shape == (8, 8)
    np.testing.assert_allclose(img.array, 0.299 * r + 0.587 * g + 0.114 * b, rtol=1e-5)


def check_constant(value: float, shape=(8, 8)) -> Callable[[Any], None]:
    def check(img) -> None:
        assert img.array.shape == shape
        np.testing.assert_allclose(img.array, value)

    return check


def check_one_bit(img) -> None:
    assert set(np.unique(img.array)) == {0.0, 255.0}


def check_frame(k: int) -> Callable[[Any], None]:
    def check(img) -> None:
        np.testing.assert_array_equal(img.array, np.full((8, 8), 100.0 * (k + 1)))

    return check


def check_mapping(expected: tuple[str, float, float]) -> Callable[[Any], None]:
    kind, low, high = expected

    def check(result) -> None:
        mapping = result[1]
        assert mapping.kind == kind and np.isfinite([mapping.low, mapping.high]).all()
        assert mapping.low == pytest.approx(low, rel=1e-3, abs=1e-3)
        assert mapping.high == pytest.approx(high, rel=1e-3, abs=1e-3)
        assert mapping_from_dict(mapping.to_dict()) == mapping  # how the model stores it

    return check


def check_percentiles(data: np.ndarray, copies: int) -> Callable[[Any], None]:
    """The 0.5/99.5 percentiles of ``copies`` images equal to ``data``."""
    low, high = np.percentile(np.tile(data.astype(np.float32).ravel(), copies), [0.5, 99.5])
    return check_mapping(("percentile", float(low), float(high)))


def check_full_range(result) -> None:
    x = pix(result)
    assert clipped_fraction(x) < 0.05, clipped_fraction(x)
    assert float(x.min()) < -0.9 and float(x.max()) > 0.9


def check_count(n: int) -> Callable[[Any], None]:
    def check(result) -> None:
        assert len(result[2]) == n and all(it["pixel_values"].shape == (1, 32, 32) for it in result[2])

    return check


# ------------------------------------------------------------------------------------------ readers


def _link_loop(tmp: Path) -> Path:
    os.symlink(tmp / "b.png", tmp / "a.png")
    os.symlink(tmp / "a.png", tmp / "b.png")
    return tmp / "a.png"


def _broken_link(tmp: Path) -> Path:
    os.symlink(tmp / "nowhere.png", tmp / "broken.png")
    return tmp / "broken.png"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.png")
    return tmp / "pipe.png"


def _dir_named_png(tmp: Path) -> Path:
    (tmp / "folder.png").mkdir()
    return tmp / "folder.png"


def _png_named(tmp: Path, name: str) -> Path:
    return png8(tmp / name)


def _jpeg_named_png(tmp: Path) -> Path:
    return save(tmp / "photo.png", Image.new("L", (8, 8), 77), "JPEG", quality=100)


def _dicom_named_png(tmp: Path) -> Path:
    return dicom(tmp / "scan.png", np.full((8, 8), 1234, np.uint16))


def _nan_tiff(tmp: Path) -> Path:
    a = np.ones((16, 16), np.float32)
    a[3, 4] = np.nan
    return tiff_float(tmp / "nan.tif", a)


def _inf_tiff(tmp: Path) -> Path:
    a = np.ones((16, 16), np.float32)
    a[0, 0] = np.inf
    return tiff_float(tmp / "inf.tif", a)


def _multiframe(tmp: Path) -> Path:
    return dicom(tmp / "cine.dcm", np.stack([np.full((8, 8), 100 * (k + 1), np.uint16) for k in range(3)]))


def _multipage_tiff(tmp: Path) -> Path:
    pages = [Image.new("L", (8, 8), v) for v in (10, 20, 30)]
    path = tmp / "pages.tif"
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])
    return path


READER_CASES = [
    Case("missing file", read(lambda t: t / "absent.png"), REFUSE, "absent.png", ("not found",)),
    Case(
        "zero-byte png", read(lambda t: write_bytes(t / "zero.png", b"")), REFUSE, "zero.png", ("expected",)
    ),
    Case(
        "text file named .png",
        read(lambda t: write_bytes(t / "notes.png", b"hello, this is text\n")),
        REFUSE,
        "notes.png",
        ("expected",),
    ),
    Case("truncated png", read(lambda t: truncated(t / "cut.png")), REFUSE, "cut.png", ("decode", "truncat")),
    Case("truncated jpeg", read(lambda t: truncated(t / "cut.jpg", "JPEG")), REFUSE, "cut.jpg", ("truncat",)),
    Case(
        "truncated tiff",
        read(lambda t: truncated(t / "cut.tif", "TIFF")),
        REFUSE,
        "cut.tif",
        ("decode", "tiff"),
    ),
    Case("directory named .png", read(_dir_named_png), REFUSE, "folder.png", ("directory",)),
    Case("symlink loop", read(_link_loop), REFUSE, "a.png", ("loop",)),
    Case("broken symlink", read(_broken_link), REFUSE, "broken.png", ("broken",)),
    Case("pipe named .png (no hang)", read(_fifo), REFUSE, "pipe.png", ("regular file",)),
    Case("png named .dcm", read(lambda t: _png_named(t, "really_png.dcm")), LOAD, check=check_8bit_gradient),
    Case(
        "jpeg named .png",
        read(_jpeg_named_png),
        LOAD,
        check=lambda img: np.testing.assert_allclose(img.array, 77, atol=1),
    ),
    Case("dicom named .png", read(_dicom_named_png), LOAD, check=check_constant(1234.0)),
    Case("8-bit png", read(lambda t: png8(t / "g.png")), LOAD, check=check_8bit_gradient),
    Case("16-bit png", read(lambda t: png16(t / "g16.png")), LOAD, check=check_png16),
    Case(
        "rgb png",
        read(lambda t: save(t / "rgb.png", Image.new("RGB", (8, 8), (200, 100, 50)))),
        LOAD,
        check=check_rgb,
    ),
    Case(
        "rgba png (alpha dropped)",
        read(lambda t: save(t / "rgba.png", Image.new("RGBA", (8, 8), (200, 100, 50, 10)))),
        LOAD,
        check=check_rgb,
    ),
    Case(
        "palette png",
        read(lambda t: save(t / "pal.png", palette_image(index=3, rgb=(90, 90, 90)))),
        LOAD,
        check=check_constant(90.0),
    ),
    Case(
        "LA png",
        read(lambda t: save(t / "la.png", Image.new("LA", (8, 8), (120, 3)))),
        LOAD,
        check=check_constant(120.0),
    ),
    Case(
        "1-bit png",
        read(lambda t: save(t / "bw.png", Image.fromarray(np.eye(8, dtype=bool)))),
        LOAD,
        check=check_one_bit,
    ),
    Case(
        "cmyk tiff",
        read(lambda t: save(t / "cmyk.tif", Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "TIFF")),
        LOAD,
        check=check_constant(255.0),
    ),
    Case("multi-page tiff, page 2", read(_multipage_tiff, frame=2), LOAD, check=check_constant(30.0)),
    Case("decompression bomb", read(lambda t: bomb_png(t / "bomb.png")), REFUSE, "bomb.png", ("bomb",)),
    Case("NaN pixels", read(_nan_tiff), REFUSE, "nan.tif", ("finite",)),
    Case("infinite pixels", read(_inf_tiff), REFUSE, "inf.tif", ("finite",)),
    Case(
        "dicom without pixel data",
        read(lambda t: dicom(t / "nopix.dcm", pixels=False)),
        REFUSE,
        "nopix.dcm",
        ("PixelData",),
    ),
    Case(
        "compressed dicom without decoder",
        read(lambda t: dicom(t / "j2k.dcm", compressed=True)),
        REFUSE,
        "j2k.dcm",
        ("decoder",),
    ),
    Case(
        "dicom with short pixel data",
        read(lambda t: dicom(t / "short.dcm", short_pixels=True)),
        REFUSE,
        "short.dcm",
        ("expected",),
    ),
    Case(
        "text named .dcm",
        read(lambda t: write_bytes(t / "fake.dcm", b"not a dicom at all" * 20)),
        REFUSE,
        "fake.dcm",
        ("DICOM",),
    ),
    Case("multi-frame dicom, first frame", read(_multiframe), LOAD, check=check_frame(0)),
    Case("multi-frame dicom, frame 2", read(_multiframe, frame=2), LOAD, check=check_frame(2)),
    Case("multi-frame dicom, frame out of range", read(_multiframe, frame=7), REFUSE, "cine.dcm", ("range",)),
    Case(
        "nifti 4-D",
        read(lambda t: nifti(t / "series.nii.gz", np.zeros((8, 8, 4, 3))), frame=0),
        REFUSE,
        "series.nii.gz",
        ("3-D",),
    ),
    Case(
        "nifti 3-D without frame",
        read(lambda t: nifti(t / "vol.nii", volume())),
        REFUSE,
        "vol.nii",
        ("frame",),
    ),
    Case(
        "nifti 2-D",
        read(lambda t: nifti(t / "flat.nii.gz", np.full((8, 8), 5.0))),
        LOAD,
        check=check_constant(5.0),
    ),
    Case(
        "garbage .nii.gz",
        read(lambda t: write_bytes(t / "junk.nii.gz", b"\x1f\x8b garbage"), frame=0),
        REFUSE,
        "junk.nii.gz",
        ("NIfTI",),
    ),
]


# ------------------------------------------------------------------------------------------ intensity


def _mixed_depths(root: Path) -> None:
    png8(root / "a8.png")
    png16(root / "b16.png")


def _float_tiffs(lo: float, hi: float) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for i in range(3):
            tiff_float(root / f"f{i}.tif", gradient((32, 32), lo, hi))

    return make


def _png16s(hi: int) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for i in range(3):
            png16(root / f"x{i}.png", lo=0, hi=hi)

    return make


def _nan_among_good(root: Path) -> None:
    good_folder(root)
    _nan_tiff(root)


def _finite_fit(_tmp: Path):
    a = gradient((8, 8), 0, 10).astype(np.float32)
    a[0, 5] = np.inf
    return lambda: MinMaxMapping().fit([a, np.full((4, 4), np.nan, np.float32)])


def _check_finite_fit(m) -> None:
    assert (m.low, m.high) == (0.0, pytest.approx(10.0))


INTENSITY_CASES = [
    Case("8-bit folder: window 0..255", folder(good_folder), LOAD, check=check_mapping(("window", 0, 255))),
    Case("16-bit png: full range", folder(_png16s(65535)), LOAD, check=check_full_range),
    Case("12-bit content in 16-bit png: its range", folder(_png16s(4095)), LOAD, check=check_full_range),
    Case(
        "MR dicom: its stored window",
        folder(lambda r: [dicom(r / f"mr{i}.dcm", window=(1000, 1600)) for i in range(2)]),
        LOAD,
        check=check_mapping(("window", 200, 1800)),
    ),
    Case(
        "MR dicom without window: percentiles",
        folder(lambda r: [dicom(r / f"mr{i}.dcm") for i in range(2)]),
        LOAD,
        check=lambda res: (
            check_percentiles(gradient((24, 24), 0, 4000).astype(np.uint16), 2)(res),
            check_full_range(res),
        ),
    ),
    Case(
        "CT dicom: HU window",
        folder(
            lambda r: [
                dicom(r / f"ct{i}.dcm", modality="CT", intercept=-1024, window=(40, 400)) for i in range(2)
            ]
        ),
        LOAD,
        check=check_mapping(("window", -1000, 1000)),
    ),
    Case("float tiff in [0, 1]: window 0..1", folder(_float_tiffs(0.0, 1.0)), LOAD, check=check_full_range),
    Case(
        "float tiff outside [0, 1]: refused naming --intensity",
        folder(_float_tiffs(-5.0, 300.0)),
        REFUSE,
        "f0.tif",
        ("--intensity",),
    ),
    Case(
        "float tiff outside [0, 1] with --intensity percentile",
        folder(_float_tiffs(-5.0, 300.0), intensity="percentile"),
        LOAD,
        check=check_percentiles(gradient((32, 32), -5.0, 300.0).astype(np.float32), 3),
    ),
    Case("8- and 16-bit mixed: refused", folder(_mixed_depths), REFUSE, "b16.png", ("--intensity",)),
    Case(
        "explicit window kept",
        folder(_png16s(65535), intensity="window", window=(0, 65535)),
        LOAD,
        check=check_mapping(("window", 0, 65535)),
    ),
    Case(
        "minmax with a NaN image: refused",
        folder(_nan_among_good, intensity="minmax"),
        REFUSE,
        "nan.tif",
        ("finite",),
    ),
    Case(
        "minmax with a NaN image: skipped",
        folder_skip(_nan_among_good, intensity="minmax"),
        SKIP,
        "nan.tif",
        ("finite",),
    ),
    Case("minmax fit ignores inf/NaN", _finite_fit, LOAD, check=_check_finite_fit),
    Case(
        "percentile fit on NaN only",
        lambda t: lambda: PercentileMapping().fit(np.full((4, 4), np.nan)),
        REFUSE,
        "PercentileMapping",
        ("finite",),
    ),
    Case(
        "saved mapping with high = Infinity",
        lambda t: lambda: mapping_from_dict({"type": "minmax", "low": 0.0, "high": float("inf")}),
        REFUSE,
        "MinMaxMapping",
        ("finite",),
    ),
    Case(
        "intensity name unknown",
        folder(good_folder, intensity="clahe"),
        REFUSE,
        "intensity",
        ("auto", "window"),
    ),
    Case(
        "dataset without a mapping chooses it from the data",
        lambda t: lambda: FolderImageDataset(_png16s(4095)(t) or t, 16),
        LOAD,
        check=lambda ds: (
            (isinstance(ds.mapping, MinMaxMapping) and ds.mapping.high == 4095)
            or pytest.fail(repr(ds.mapping))
        ),
    ),
]


# ------------------------------------------------------------------------------------------ folders


def _nifti_folder(root: Path) -> None:
    nifti(root / "vol.nii.gz", volume(5, empty=(0,)))


def _check_nifti_slices(result) -> None:
    ds, mapping, items = result
    assert len(items) == 4  # the constant slice is dropped
    assert isinstance(mapping, PercentileMapping)
    assert len({it["path"] for it in items}) == 1 and items[0]["path"].endswith("vol.nii.gz")


def _nifti_split(tmp: Path):
    root = tmp / "d"
    for v in range(3):
        nifti(root / f"vol{v}.nii.gz", volume(6))
    conf = DataConfig(source="folder", path=str(root), resolution=16, split_fractions=(0.34, 0.33, 0.33))

    def call():
        parts = [
            build_dataset(DataConfig(**{**conf.to_dict(), "split": s}))[0] for s in ("train", "val", "test")
        ]
        return [set(ds.paths) for ds in parts if len(ds)]

    return call


def _check_volumes_not_split(parts) -> None:
    seen = [p for part in parts for p in part]
    assert len(seen) == len(set(seen)) == 3  # each volume on exactly one side


def _loop_folder(root: Path) -> None:
    good_folder(root / "sub", 2)
    os.symlink(root, root / "sub" / "back_to_root")


def _linked_folder(tmp_root: Path) -> None:
    outside = tmp_root.parent / "mounted"
    good_folder(outside, 2)
    os.symlink(outside, tmp_root / "linked")


def _dir_named_like_image(root: Path) -> None:
    png8(root / "x.png" / "inner.png")
    png8(root / "y.png")


def _multiframe_folder(root: Path) -> None:
    dicom(
        root / "cine.dcm",
        np.stack([np.full((32, 32), 100 * (k + 1), np.uint16) for k in range(3)]),
        window=(200, 400),
    )


def _with(*makers: Callable[[Path], Any]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        good_folder(root)
        for m in makers:
            m(root)

    return make


def _strip(root: Path) -> None:
    png8(root / "strip.png", (10, 2000))


def _tiny(root: Path) -> None:
    png8(root / "tiny.png", (1, 1))


def _worker_error(tmp: Path):
    root = good_folder(tmp / "d", 2)
    truncated(root / "z_cut.png")

    def call():
        ds = FolderImageDataset(root, 16, mapping=WindowMapping(0, 255))
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1))
        try:
            return list(batches)
        except MedsdError as e:
            error = e.with_traceback(None)  # drop the frames holding the loader, so its worker stops now
        del batches
        raise error

    return call


FOLDER_CASES = [
    Case("empty folder", folder(lambda r: None), REFUSE, "data", ("no image files",)),
    Case(
        "folder of non-images",
        folder(lambda r: write_bytes(r / "notes.txt", b"x")),
        REFUSE,
        "data",
        ("notes.txt",),
    ),
    Case("nifti volume in a folder: its slices", folder(_nifti_folder), LOAD, check=_check_nifti_slices),
    Case("nifti volumes stay on one side of a split", _nifti_split, LOAD, check=_check_volumes_not_split),
    Case(
        "4-D nifti in a folder: skipped",
        folder_skip(_with(lambda r: nifti(r / "series.nii.gz", np.ones((8, 8, 2, 3))))),
        SKIP,
        "series.nii.gz",
        ("3-D",),
    ),
    Case(
        "multi-frame dicom in a folder: every frame", folder(_multiframe_folder), LOAD, check=check_count(3)
    ),
    Case("1x1 image: refused", folder(_with(_tiny)), REFUSE, "tiny.png", ("minimum",)),
    Case("1x1 image: skipped", folder_skip(_with(_tiny)), SKIP, "tiny.png", ("minimum",)),
    Case("10x2000 strip: refused", folder(_with(_strip)), REFUSE, "strip.png", ("aspect",)),
    Case("10x2000 strip: skipped", folder_skip(_with(_strip)), SKIP, "strip.png", ("aspect",)),
    Case(
        "strip allowed by max_aspect_ratio",
        folder(_with(lambda r: png8(r / "wide.png", (20, 100))), max_aspect_ratio=8.0),
        LOAD,
        check=check_count(4),
    ),
    Case(
        "small image allowed by min_image_size",
        folder(_with(lambda r: png8(r / "s.png", (4, 4))), min_image_size=2),
        LOAD,
        check=check_count(4),
    ),
    Case("NaN tiff in a folder: skipped", folder_skip(_with(_nan_tiff)), SKIP, "nan.tif", ("finite",)),
    Case(
        "truncated png in a folder: refused",
        folder(_with(lambda r: truncated(r / "cut.png"))),
        REFUSE,
        "cut.png",
        ("decode", "truncat"),
    ),
    Case(
        "zero-byte png in a folder: skipped",
        folder_skip(_with(lambda r: write_bytes(r / "zero.png", b""))),
        SKIP,
        "zero.png",
        ("empty",),
    ),
    Case(
        "broken symlink in a folder: skipped",
        folder_skip(_with(_broken_link)),
        SKIP,
        "broken.png",
        ("broken",),
    ),
    Case("symlink loop file in a folder: refused", folder(_with(_link_loop)), REFUSE, "a.png", ("loop",)),
    Case("folder link back to a parent: walked once", folder(_loop_folder), LOAD, check=check_count(2)),
    Case("linked image folder is followed", folder(_with(_linked_folder)), LOAD, check=check_count(5)),
    Case("directory named like an image", folder(_dir_named_like_image), LOAD, check=check_count(2)),
    Case(
        "compressed dicom in a folder: skipped",
        folder_skip(_with(lambda r: dicom(r / "j2k.dcm", compressed=True))),
        SKIP,
        "j2k.dcm",
        ("decoder",),
    ),
    Case(
        "error in a DataLoader worker stays one line",
        _worker_error,
        REFUSE,
        "z_cut.png",
        ("decode", "truncat"),
    ),
]


# ------------------------------------------------------------------------------------------ CSVs


def _csv_with(names: list[str], encoding: str = "utf-8", make_images: bool = True):
    def write(tmp: Path) -> Path:
        root = tmp / "set"
        if make_images:
            for n in names:
                if n and not n.startswith(("/", "..")):
                    png8(root / n)
        png8(tmp / "outside.png")
        rows = [{"filename": n, "label": "x"} for n in names]
        return write_csv(root / "meta.csv", rows, ["filename", "label"], encoding=encoding)

    return write


def _csv_latin1(tmp: Path) -> Path:
    root = tmp / "set"
    png8(root / "a.png")
    return write_bytes(root / "meta.csv", "filename,label\na.png,Pleuraerguß\n".encode("latin-1"))


def _csv_utf16(tmp: Path) -> Path:
    return write_bytes(tmp / "meta.csv", "filename\na.png\n".encode("utf-16"))


def _csv_binary(tmp: Path) -> Path:
    return write_bytes(tmp / "meta.csv", bytes(range(256)) * 4)


def _csv_bom(tmp: Path) -> Path:
    png8(tmp / "a.png")
    png8(tmp / "b.png")
    return write_bytes(tmp / "meta.csv", "\ufefffilename,label\na.png,x\nb.png,y\n".encode())


def _csv_absolute(tmp: Path) -> Path:
    png8(tmp / "elsewhere" / "abs.png")
    png8(tmp / "set" / "a.png")
    return write_csv(
        tmp / "set" / "meta.csv",
        [{"filename": "a.png"}, {"filename": str(tmp / "elsewhere" / "abs.png")}],
        ["filename"],
    )


def _csv_nifti(tmp: Path) -> Path:
    nifti(tmp / "vol.nii.gz", volume(3))
    return write_csv(tmp / "meta.csv", [{"filename": "vol.nii.gz", "label": "ct"}], ["filename", "label"])


def _csv_missing_file(tmp: Path) -> Path:
    for n in ("a.png", "b.png"):
        png8(tmp / n)
    return write_csv(
        tmp / "meta.csv", [{"filename": n} for n in ("a.png", "gone.png", "b.png")], ["filename"]
    )


def _csv_skip_missing(tmp: Path):
    path = _csv_missing_file(tmp)
    conf = DataConfig(source="csv", path=str(path), resolution=32, split="all", skip_bad_images=True)

    def call():
        ds, _ = build_dataset(conf)
        return ds.skipped, len([ds[i] for i in range(len(ds))])

    return call


def _data_args_flag(tmp: Path):
    from medsd.training.data_args import DataArgs, data_config

    path = _csv_with(["../outside.png", "a.png"])(tmp)
    args = DataArgs(train_data=str(path), data_split="all", resolution=32, allow_outside_root=True)
    return lambda: build_dataset(data_config(args))


def _csv_direct_root(tmp: Path):
    """``CSVImageDataset`` with its own ``root``: confinement is to that root, not the CSV's folder."""
    png8(tmp / "images" / "a.png")
    png8(tmp / "a.png")
    path = write_csv(tmp / "meta" / "m.csv", [{"filename": "a.png"}, {"filename": "../a.png"}], ["filename"])
    return lambda: CSVImageDataset(path, root=tmp / "images", resolution=32)


CSV_CASES = [
    Case("csv with root=: ../ leaves that root", _csv_direct_root, REFUSE, "../a.png", ("m.csv",)),
    Case(
        "csv path ../ leaves the folder",
        csv_source(_csv_with(["a.png", "../outside.png"])),
        REFUSE,
        "../outside.png",
        ("meta.csv",),
    ),
    Case(
        "csv absolute path elsewhere",
        csv_source(_csv_absolute),
        REFUSE,
        "abs.png",
        ("outside the data folder",),
    ),
    Case(
        "csv ../ allowed by allow_outside_root",
        csv_source(_csv_with(["a.png", "../outside.png"]), allow_outside_root=True),
        LOAD,
        check=check_count(2),
    ),
    Case(
        "--allow_outside_root reaches the data layer",
        _data_args_flag,
        LOAD,
        check=lambda res: len(res[0]) == 2 or pytest.fail(str(len(res[0]))),
    ),
    Case("latin-1 csv", csv_source(_csv_latin1), REFUSE, "meta.csv", ("UTF-8",)),
    Case("utf-16 csv", csv_source(_csv_utf16), REFUSE, "meta.csv", ("UTF-8",)),
    Case("binary file named .csv", csv_source(_csv_binary), REFUSE, "meta.csv", ("UTF-8", "CSV")),
    Case("csv with a BOM", csv_source(_csv_bom), LOAD, check=check_count(2)),
    Case(
        "csv missing column names those found",
        csv_source(_csv_with(["a.png"]), image_column="path"),
        REFUSE,
        "meta.csv",
        ("filename, label",),
    ),
    Case(
        "empty csv", csv_source(lambda t: write_bytes(t / "meta.csv", b"\n")), REFUSE, "meta.csv", ("header",)
    ),
    Case(
        "csv header only",
        csv_source(lambda t: write_bytes(t / "meta.csv", b"filename\n")),
        REFUSE,
        "meta.csv",
        ("row",),
    ),
    Case(
        "csv empty filename cell",
        csv_source(_csv_with(["a.png", ""], make_images=True)),
        REFUSE,
        "meta.csv",
        ("expected an image path",),
    ),
    Case("csv row naming a missing file", csv_source(_csv_missing_file), REFUSE, "gone.png", ("not found",)),
    Case("csv row naming a missing file: skipped", _csv_skip_missing, SKIP, "gone.png", ("not found",)),
    Case("csv naming a nifti volume: its slices", csv_source(_csv_nifti), LOAD, check=check_count(3)),
    Case(
        "csv naming a directory",
        csv_source(
            lambda t: (
                (t / "sub.png").mkdir() or write_csv(t / "meta.csv", [{"filename": "sub.png"}], ["filename"])
            )
        ),
        REFUSE,
        "sub.png",
        ("directory",),
    ),
]


# ------------------------------------------------------------------------------------------ streaming


def _stream(make: Callable[[Path], Any], skip: bool):
    def build(tmp: Path):
        root = tmp / "imgs"
        root.mkdir()
        make(root)
        conf = DataConfig(
            source="hf",
            path="imagefolder",
            data_dir=str(root),
            streaming=True,
            split="all",
            resolution=32,
            skip_bad_images=skip,
        )

        def call():
            ds, _ = build_dataset(conf)
            items = list(ds)
            return (ds.skipped, len(items)) if skip else items

        return call

    return build


def _hf_map_skip(tmp: Path):
    _with(lambda r: write_bytes(r / "bad.png", b"\x89PNG\r\n\x1a\nxx"))(tmp)

    def call():
        ds = HFImageDataset(
            "imagefolder", data_dir=str(tmp), resolution=32, skip_bad_images=True, progress=False
        )
        return ds.skipped, len([ds[i] for i in range(len(ds))])

    return call


STREAM_CASES = [
    Case(
        "streaming: corrupt png skipped",
        _stream(_with(lambda r: write_bytes(r / "bad.png", b"\x89PNG\r\n\x1a\nxx")), True),
        SKIP,
        "bad.png",
        ("expected",),
    ),
    Case(
        "streaming: corrupt png refused",
        _stream(_with(lambda r: write_bytes(r / "bad.png", b"\x89PNG\r\n\x1a\nxx")), False),
        REFUSE,
        "bad.png",
        ("expected",),
    ),
    Case("streaming: 1x1 image skipped", _stream(_with(_tiny), True), SKIP, "tiny.png", ("minimum",)),
    Case("streaming: strip refused", _stream(_with(_strip), False), REFUSE, "strip.png", ("aspect",)),
    Case(
        "streaming: 16-bit pngs use their range",
        _stream(_png16s(4095), False),
        LOAD,
        check=lambda items: check_full_range((None, None, items)),
    ),
    Case("map-style hf imagefolder: corrupt png skipped", _hf_map_skip, SKIP, "bad.png", ("expected",)),
]


# ------------------------------------------------------------------------------------------ eval reading


def _eval(make: Callable[[Path], Any], size: int = 32):
    def build(tmp: Path):
        from medsd.metrics import load_image_set

        root = tmp / "gen"
        root.mkdir()
        make(root)
        return lambda: load_image_set(str(root), size=size)

    return build


EVAL_CASES = [
    Case("eval: NaN tiff refused", _eval(_with(_nan_tiff)), REFUSE, "nan.tif", ("finite",)),
    Case(
        "eval: truncated png refused",
        _eval(_with(lambda r: truncated(r / "cut.png"))),
        REFUSE,
        "cut.png",
        ("decode", "truncat"),
    ),
    Case(
        "eval: zero-byte png refused",
        _eval(_with(lambda r: write_bytes(r / "zero.png", b""))),
        REFUSE,
        "zero.png",
        ("empty",),
    ),
    Case(
        "eval: 1x1 image refused",
        _eval(_with(_tiny)),
        REFUSE,
        "tiny.png",
        ("minimum",),
    ),
    Case(
        "eval: strip refused",
        _eval(_with(_strip)),
        REFUSE,
        "strip.png",
        ("aspect",),
    ),
    Case(
        "eval: one valid nifti volume",
        _eval(_nifti_folder),
        LOAD,
        check=lambda s: len(s) == 4 or pytest.fail(str(len(s))),
    ),
]


CASES = READER_CASES + INTENSITY_CASES + FOLDER_CASES + CSV_CASES + STREAM_CASES + EVAL_CASES
