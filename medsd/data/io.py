"""Reading medical images: PNG/JPEG (8/16 bit), TIFF, BMP, DICOM and NIfTI slices (writers: ``writers``).

``read_image`` returns a ``MedImage``: a float32 HxW array in native units (raw pixel values, or HU for CT
DICOM after RescaleSlope/Intercept) plus a ``meta`` dict. pydicom, nibabel and tifffile are imported only
when a file needs them. Every bad file raises ``MedImageError`` with one line naming it and what was
expected: missing, a directory, a broken or looping link, empty, truncated, undecodable, a decompression
bomb, a DICOM without pixel data or without a decoder, a 4-D NIfTI, or NaN / infinite pixels.
"""

from __future__ import annotations

import errno
import importlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MedImageError, one_line
from .errors import require_package as _require
from .intensity import WindowMapping

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
"""Extensions of files that hold 2-D images (``read_image`` reads them without ``frame``)."""
_DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
DATASET_EXTENSIONS = IMAGE_EXTENSIONS + NIFTI_EXTENSIONS
"""Extensions folder datasets read: 2-D images and NIfTI volumes (one item per non-empty axial slice)."""
EXPECTED = "expected a PNG, JPEG, TIFF, BMP, DICOM or NIfTI image"

# transfer syntax UID prefix -> packages that can decode it (pydicom decodes uncompressed/RLE/deflate itself)
_DECODERS = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",  # JPEG baseline/extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, python-gdcm)",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
}
# leading bytes of the formats PIL reads: a file with one of them is read by PIL whatever its extension
_PIL_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"BM", b"GIF8")


@dataclass
class MedImage:
    """A 2-D image in native units: ``array`` float32 [H, W]; ``meta`` has at least ``path``, ``bit_depth``,
    ``modality``, ``format`` and ``window`` ((center, width) from DICOM, else None)."""

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` / ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def check_file(path: Path) -> None:
    """Raise ``MedImageError`` unless ``path`` is a non-empty regular file that can be opened."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise MedImageError(f"{path}: broken symbolic link; expected an image file") from None
        raise MedImageError(f"{path}: file not found") from None
    except OSError as e:
        why = "symbolic link loop" if e.errno == errno.ELOOP else one_line(e.strerror or e)
        raise MedImageError(f"{path}: cannot open ({why}); expected an image file") from None
    if stat.S_ISDIR(st.st_mode):
        raise MedImageError(f"{path}: is a directory; expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise MedImageError(f"{path}: not a regular file (a pipe, socket or device); expected an image file")
    if st.st_size == 0:
        raise MedImageError(f"{path}: empty file (0 bytes); {EXPECTED}")
    if not os.access(path, os.R_OK):
        raise MedImageError(f"{path}: permission denied; expected a readable image file")


def _kind(path: Path) -> str:
    if is_nifti(path):
        return "nifti"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise MedImageError(f"{path}: cannot read ({one_line(e)}); expected an image file") from None
    if head.startswith(_PIL_MAGIC):
        return "pil"  # e.g. a PNG named .dcm
    if head[128:132] == b"DICM" or path.name.lower().endswith(_DICOM_EXTENSIONS):
        return "dicom"
    return "pil"


def read_image(path: str | Path, *, frame: int | None = None, allow_nonfinite: bool = False) -> MedImage:
    """Read one 2-D image (PNG, JPEG, TIFF, BMP, DICOM; NIfTI: axial slice ``frame``).

    ``frame`` picks a frame of a multi-frame DICOM / multi-page TIFF (default: the first) or an axial
    slice of a NIfTI volume (required unless the volume has one slice). NaN or infinite pixels raise
    unless ``allow_nonfinite``. Raises ``MedImageError`` for missing, unreadable or unsupported files.
    """
    path = Path(path)
    check_file(path)
    kind = _kind(path)
    if kind == "dicom":
        img = _read_dicom(path, frame)
    elif kind == "nifti":
        img = _read_nifti_frame(path, frame)
    else:
        img = _read_pil(path, frame)
    if img.array.size == 0:
        raise MedImageError(f"{path}: empty image (shape {img.array.shape}); expected at least 1x1 pixels")
    if not allow_nonfinite:
        check_finite(img.array, str(path) if frame is None else f"{path} (frame {frame})")
    return img


def check_finite(array: np.ndarray, where: str) -> None:
    """Raise ``MedImageError`` naming ``where`` if ``array`` holds NaN or infinite values."""
    a = np.asarray(array)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise MedImageError(
            f"{where}: {bad} of {a.size} pixels are NaN or infinite; expected finite pixel values"
        )


def _meta(path: Path, fmt: str, bit_depth: int, **extra: Any) -> dict[str, Any]:
    meta = {"path": str(path), "format": fmt, "bit_depth": bit_depth, "modality": None, "window": None}
    meta.update(extra)
    return meta


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26:
        return head[24]
    return None


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3|4]`` colour to float32 grey (ITU-R BT.601 luma); grey stored as RGB keeps its exact values.

    The one grey conversion of medsd: readers, ``datasets`` images and evaluation all use it.
    """
    rgb = rgb[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32)  # grey stored as RGB: keep the exact values
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R BT.601 luma, as PIL's convert("L") but unrounded


def pil_to_array(im: Any) -> tuple[np.ndarray, int]:
    """A PIL image -> (float32 HxW array in raw pixel values, bit depth); colour is reduced to luminance.

    1-bit images become 0/255, alpha is dropped (LA, RGBA, palette with transparency), palette and other
    colour modes are converted to RGB first. Float images have bit depth 32.
    """
    mode = im.mode
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.float32), 8
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32), 16
    if mode == "I":
        a = np.asarray(im)
        return a.astype(np.float32), 16 if a.size and a.min() >= 0 and a.max() <= 65535 else 32
    if mode == "F":
        return np.asarray(im, dtype=np.float32), 32
    if mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    return rgb_to_gray(np.asarray(im)), 8


def _bomb_limit() -> int | None:
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def _read_pil(path: Path, frame: int | None) -> MedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = im.format or "unknown"
            n_frames = getattr(im, "n_frames", 1)
            if frame is not None:
                if not 0 <= frame < n_frames:
                    raise MedImageError(
                        f"{path}: frame {frame} out of range; the file has {n_frames} frame(s)"
                    )
                im.seek(frame)
            im.load()
            mode = im.mode
            arr, depth = pil_to_array(im)
    except MedImageError:
        raise
    except Image.DecompressionBombError as e:
        raise MedImageError(
            f"{path}: refused as a possible decompression bomb ({one_line(e)}); expected an image of at "
            f"most {_bomb_limit()} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise MedImageError(f"{path}: not a readable image (unknown format); {EXPECTED}") from None
    except Exception as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tifffile(path, frame, e)
        raise MedImageError(
            f"{path}: cannot decode image ({type(e).__name__}: {one_line(e)}); {EXPECTED}"
        ) from None
    if fmt == "PNG" and mode.startswith("I"):
        depth = _png_bit_depth(path) or depth
    return MedImage(arr, _meta(path, fmt, depth, num_frames=n_frames))


def _read_tifffile(path: Path, frame: int | None, pil_error: Exception) -> MedImage:
    try:
        tifffile = importlib.import_module("tifffile")
    except ImportError:
        raise MedImageError(
            f"{path}: PIL cannot decode this TIFF ({one_line(pil_error)}); pip install tifffile"
        ) from None
    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
            if not 0 <= (frame or 0) < pages:
                raise MedImageError(f"{path}: frame {frame} out of range; the file has {pages} page(s)")
            page = tif.pages[frame or 0]
            limit = _bomb_limit()
            if limit is not None and int(np.prod(page.shape[:2])) > limit:
                raise MedImageError(
                    f"{path}: TIFF page of {page.shape} is over the decompression-bomb limit of {limit} "
                    "pixels; expected a smaller image"
                )
            a = np.asarray(page.asarray())
    except MedImageError:
        raise
    except Exception as e:
        raise MedImageError(f"{path}: cannot decode TIFF ({type(e).__name__}: {one_line(e)})") from None
    depth = a.dtype.itemsize * 8
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = rgb_to_gray(a)
    if a.ndim != 2:
        raise MedImageError(f"{path}: expected a 2-D grey or RGB TIFF page, got shape {a.shape}")
    return MedImage(a.astype(np.float32), _meta(path, "TIFF", depth, num_frames=pages))


def _decode_dicom(path: Path, ds: Any) -> np.ndarray:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise MedImageError(
            f"{path}: DICOM pixel data too large for memory; expected a smaller image"
        ) from None
    except Exception as e:
        if ts is not None and ts.is_compressed:
            pkgs = next((v for k, v in _DECODERS.items() if str(ts).startswith(k)), None)
            pkgs = pkgs or "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"
            raise MedImageError(
                f"{path}: cannot decode compressed transfer syntax {ts.name} ({ts}); "
                f"install a decoder: pip install {pkgs} [{type(e).__name__}]"
            ) from None
        raise MedImageError(
            f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {one_line(e)}); "
            "expected pixel data matching Rows, Columns and BitsAllocated"
        ) from None


def _read_dicom(path: Path, frame: int | None) -> MedImage:
    pydicom = _require("pydicom", "dicom")
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:
        raise MedImageError(
            f"{path}: not a readable DICOM file ({type(e).__name__}: {one_line(e)})"
        ) from None
    if "PixelData" not in ds:
        if getattr(ds, "preamble", None) is None and "SOPClassUID" not in ds:
            raise MedImageError(f"{path}: not a DICOM file (no DICM marker, no pixel data); {EXPECTED}")
        sop = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "unknown"))
        raise MedImageError(f"{path}: DICOM has no PixelData (SOP class {sop}); expected an image object")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    arr = _decode_dicom(path, ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        f = 0 if frame is None else frame
        if not 0 <= f < n_frames:
            raise MedImageError(f"{path}: frame {frame} out of range; the file has {n_frames} frames")
        arr = arr[f]
    elif frame not in (None, 0):
        raise MedImageError(f"{path}: frame {frame} out of range; the file has 1 frame")
    if samples > 1:
        arr = rgb_to_gray(np.asarray(arr))
    if arr.ndim != 2:
        raise MedImageError(f"{path}: expected a 2-D DICOM image, got pixel array of shape {arr.shape}")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    window = _dicom_stored_window(ds, pydicom)
    a = np.asarray(arr, dtype=np.float64)
    inverted = photometric == "MONOCHROME1" and samples == 1
    if inverted:
        # MONOCHROME1 shows low values bright: mirror the stored range so that bright = dense, like MONOCHROME2
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        a = (lo + hi) - a
        if window is not None:
            window = (slope * (lo + hi) + 2 * intercept - window[0], window[1])
    a = a * slope + intercept
    meta = _meta(
        path,
        "DICOM",
        bits,
        modality=str(ds.get("Modality", "")) or None,
        window=window,
        rescale=(slope, intercept),
        photometric=photometric,
        inverted=inverted,
        num_frames=n_frames,
        patient_id=str(ds.get("PatientID", "")) or None,
        view=str(ds.get("ViewPosition", "")) or None,
        pixel_spacing=tuple(float(v) for v in ds.PixelSpacing) if "PixelSpacing" in ds else None,
        transfer_syntax=str(ts) if ts is not None else None,
    )
    return MedImage(a.astype(np.float32), meta)


def _dicom_stored_window(ds: Any, pydicom: Any) -> tuple[float, float] | None:
    """(center, width) of the first stored VOI window, or None when absent or unusable (width <= 0)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = ds.WindowCenter, ds.WindowWidth
    c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
    w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    return (c, w) if np.isfinite(c) and np.isfinite(w) and w > 0 else None


def count_frames(path: str | Path) -> list[int | None]:
    """The 2-D images a file holds, as ``frame`` values for ``read_image``: ``[None]`` for a single image,
    the frames of a multi-frame DICOM or multi-page TIFF, the non-empty axial slices of a NIfTI volume.

    Only headers are read (NIfTI: the volume, to drop constant slices). A file that cannot be read gives
    ``[None]``; reading it later raises the error.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if is_nifti(path):
            _, indices = read_nifti_slices(path, axis=2, skip_empty=True, return_indices=True)
            return list(indices) or [None]
        if name.endswith((".tif", ".tiff")):
            from PIL import Image

            with Image.open(path) as im:
                n = getattr(im, "n_frames", 1)
        elif name.endswith(_DICOM_EXTENSIONS):
            pydicom = _require("pydicom", "dicom")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            n = int(ds.get("NumberOfFrames", 1) or 1)
        else:
            return [None]
    except Exception:  # noqa: BLE001 - the read of the item reports the error, naming the file
        return [None]
    return list(range(n)) if n > 1 else [None]


def dicom_window(meta: dict[str, Any], default: WindowMapping | None = None) -> WindowMapping | None:
    """The ``WindowMapping`` for a DICOM's stored (center, width) window, or ``default`` if it has none."""
    window = meta.get("window")
    if window is None:
        return default
    center, width = window
    return WindowMapping.from_width_level(width, center)


_NIFTI_CACHE: dict[tuple, np.ndarray] = {}


def _nifti_volume(path: Path) -> np.ndarray:
    """The RAS+ float32 volume of ``path`` as 3-D (a 2-D image gets one slice); the last one read is kept,
    so reading slice after slice decodes a volume once."""
    nib = _require("nibabel", "nifti")
    check_file(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _NIFTI_CACHE:
        return _NIFTI_CACHE[key]
    try:
        img = nib.load(str(path))
        if len(img.shape) >= 3:
            img = nib.as_closest_canonical(img)
        vol = np.asarray(img.get_fdata(dtype=np.float32))
    except MemoryError:
        raise MedImageError(f"{path}: NIfTI volume too large for memory; expected a smaller volume") from None
    except Exception as e:
        raise MedImageError(
            f"{path}: not a readable NIfTI volume ({type(e).__name__}: {one_line(e)}); "
            "expected a .nii or .nii.gz file"
        ) from None
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim != 3:
        raise MedImageError(
            f"{path}: expected a 2-D image or 3-D NIfTI volume, got {vol.ndim}-D shape {vol.shape} "
            "(split a 4-D series into volumes first)"
        )
    _NIFTI_CACHE.clear()
    _NIFTI_CACHE[key] = vol
    return vol


def _nifti_slice(vol: np.ndarray, k: int, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(np.take(vol, k, axis=axis)), dtype=np.float32)


def _read_nifti_frame(path: Path, frame: int | None) -> MedImage:
    vol = _nifti_volume(path)
    n = vol.shape[2]
    if frame is None and n > 1:
        raise MedImageError(
            f"{path}: NIfTI volume of {n} slices; pass frame=<axial slice index> or use read_nifti_slices"
        )
    k = 0 if frame is None else frame
    if not 0 <= k < n:
        raise MedImageError(f"{path}: frame {frame} out of range; the volume has {n} axial slices")
    return MedImage(_nifti_slice(vol, k, 2), _meta(path, "NIFTI", 32, frame=frame, num_frames=n))


def read_nifti_slices(
    path: str | Path, axis: int = 2, skip_empty: bool = True, return_indices: bool = False
) -> list[np.ndarray] | tuple[list[np.ndarray], list[int]]:
    """2-D float32 slices of a NIfTI volume along ``axis`` (2 = axial), in scaled units (e.g. HU).

    The volume is reoriented to RAS+ and each slice rotated by 90 degrees (``np.rot90``) so that axial
    slices display in radiological convention (anterior up, patient right on the image left). A 2-D NIfTI
    image is one axial slice; a 4-D series raises ``MedImageError``.
    ``skip_empty`` drops constant slices (e.g. zero padding); ``return_indices`` also returns slice indices.
    """
    path = Path(path)
    if axis not in (0, 1, 2):
        raise MedImageError(f"read_nifti_slices axis: expected 0, 1 or 2, got {axis}")
    vol = _nifti_volume(path)
    slices, indices = [], []
    for k in range(vol.shape[axis]):
        s = np.take(vol, k, axis=axis)
        if skip_empty and (not np.isfinite(s).any() or np.nanmax(s) == np.nanmin(s)):
            continue
        slices.append(_nifti_slice(vol, k, axis))
        indices.append(k)
    return (slices, indices) if return_indices else slices
