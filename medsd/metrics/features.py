"""Feature extractors for distribution metrics, pluggable by name.

``get_extractor("radiomics")`` (the default) needs no weights and works offline. The learned extractors need
weights that cannot be downloaded offline; they raise :class:`MissingWeightsError` with the missing file and how
to supply it, and never silently fall back.

| name | what | weights |
|---|---|---|
| ``radiomics`` | hand-crafted first-order + GLCM + gradient + LBP + coarse layout statistics | none |
| ``inception`` | torchmetrics' FID InceptionV3 (pool3, 2048-d) | ``--inception_weights`` / ``MEDSD_INCEPTION_WEIGHTS`` |
| ``clip:<arch>[:<pretrained>]`` | open_clip image tower, e.g. ``clip:ViT-B-32:laion2b_s34b_b79k``; ``clip:biomedclip`` | open_clip cache or ``--clip_checkpoint`` |
| ``xrv[:<weights>]`` | torchxrayvision DenseNet-121 penultimate features | torchxrayvision cache |

Every extractor takes preprocessed images ``[N, H, W]`` float32 in [0, 1] (see ``medsd.metrics.io``) and returns
``[N, D]`` float64 features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsd.errors import MedsdError

INCEPTION_ENV = "MEDSD_INCEPTION_WEIGHTS"
CLIP_ENV = "MEDSD_CLIP_CHECKPOINT"
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class MissingWeightsError(MedsdError, RuntimeError):
    """A feature extractor or metric needs pretrained weights that are not available offline."""


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(prefix: str):
    """Decorator: register an extractor factory under ``prefix`` (``name`` or ``name:args``)."""

    def deco(factory):
        _REGISTRY[prefix] = factory
        return factory

    return deco


def available_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor(name: str = "radiomics", **options) -> FeatureExtractor:
    """Build an extractor from its name; ``options`` are passed to it (unknown ones are ignored)."""
    prefix, _, arg = name.partition(":")
    if prefix not in _REGISTRY:
        raise KeyError(f"unknown feature extractor '{name}' (available: {', '.join(available_extractors())})")
    return _REGISTRY[prefix](arg, **options)


class FeatureExtractor:
    """Base class: ``__call__(images01) -> [N, D]``; ``name`` and ``config`` identify it in caches and reports."""

    name = "base"
    #: True for extractors whose distances follow a published protocol (FID/KID on raw Inception features):
    #: their FD/KID are computed on raw features over all images and are comparable to published numbers.
    standard = False
    #: feature scaling before distances: "raw", "standard" (real z-score) or "robust" (median/IQR + clipping)
    scaling = "standard"

    @property
    def config(self) -> dict:
        return {}

    def extract(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: np.ndarray, progress: bool = False, batch_size: int = 64) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 4 and images.shape[1] == 1:  # [N, 1, H, W]
            images = images[:, 0]
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise ValueError(f"expected images [N, H, W], got shape {images.shape}")
        chunks = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"features {self.name}", unit="batch")
        out = [self.extract(images[i : i + batch_size]) for i in chunks]
        if not out:
            return np.zeros((0, 0))
        return np.concatenate(out).astype(np.float64)


# ------------------------------------------------------------------------------------------- radiomics

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


class RadiomicsExtractor(FeatureExtractor):
    """Offline hand-crafted texture/intensity features (in the spirit of the Fréchet Radiomics Distance).

    Per image (on the [0, 1] image resized to ``size``):

    - first order: mean, std, skewness, kurtosis, 64-bin entropy, energy (mean of x²), percentiles
      1/5/10/25/50/75/90/95/99, IQR;
    - GLCM (scikit-image ``graycomatrix``/``graycoprops``) on the image quantised to ``levels`` grey levels,
      symmetric and normalised, distances ``distances`` x angles 0/45/90/135°: contrast, dissimilarity,
      homogeneity, energy, correlation, ASM, each averaged over the angles;
    - multi-scale gradients: mean and std of the Sobel magnitude at scales 1, 1/2, 1/4;
    - uniform LBP (P=8, R=1 and R=2) histograms, 10 bins each;
    - coarse layout: 4x4 block means (anatomy/field of view), switch off with ``layout=False``.

    Scaled robustly with the real set's median/IQR before distances (``distribution.robust_scale``); the
    distances are medsd's own, not comparable to published FID.
    """

    name = "radiomics"
    scaling = "robust"  # heavy-tailed features (kurtosis of a collapsed image: 10^4 real-std out)

    def __init__(self, size: int = 128, levels: int = 32, distances=(1, 2, 4), layout: bool = True):
        self.size = int(size)
        self.levels = int(levels)
        self.distances = tuple(int(d) for d in distances)
        self.layout = bool(layout)

    @property
    def config(self) -> dict:
        return {
            "size": self.size,
            "levels": self.levels,
            "distances": list(self.distances),
            "layout": self.layout,
        }

    def feature_names(self) -> list[str]:
        names = ["mean", "std", "skewness", "kurtosis", "entropy", "energy"]
        names += [f"p{p}" for p in PERCENTILES] + ["iqr"]
        names += [f"glcm_{p}_d{d}" for d in self.distances for p in GLCM_PROPS]
        names += [f"grad_{s}_{k}" for s in (1, 2, 4) for k in ("mean", "std")]
        names += [f"lbp_r{r}_{b}" for r in (1, 2) for b in range(10)]
        if self.layout:
            names += [f"block_{i}_{j}" for i in range(4) for j in range(4)]
        return names

    def _one(self, x: np.ndarray) -> np.ndarray:
        from scipy import ndimage, stats
        from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

        if x.shape != (self.size, self.size):
            from .io import square_resize

            x = square_resize(x, self.size)
        x = x.astype(np.float64)
        flat = x.ravel()
        std = flat.std()
        hist, _ = np.histogram(flat, bins=64, range=(0.0, 1.0))
        prob = hist / max(hist.sum(), 1)
        nz = prob[prob > 0]
        pct = np.percentile(flat, PERCENTILES)
        feats = [
            flat.mean(),
            std,
            stats.skew(flat) if std > 1e-8 else 0.0,
            stats.kurtosis(flat) if std > 1e-8 else 0.0,
            float(-(nz * np.log2(nz)).sum()),
            float((flat**2).mean()),
            *pct,
            pct[5] - pct[3],
        ]
        q = np.clip((x * self.levels).astype(np.int64), 0, self.levels - 1).astype(np.uint8)
        glcm = graycomatrix(
            q,
            distances=list(self.distances),
            angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
            levels=self.levels,
            symmetric=True,
            normed=True,
        )
        for di in range(len(self.distances)):
            for prop in GLCM_PROPS:
                v = graycoprops(glcm[:, :, di : di + 1, :], prop)
                feats.append(float(np.nan_to_num(v).mean()))
        for s in (1, 2, 4):
            xs = (
                x
                if s == 1
                else x[: x.shape[0] // s * s, : x.shape[1] // s * s]
                .reshape(x.shape[0] // s, s, x.shape[1] // s, s)
                .mean(axis=(1, 3))
            )
            g = np.hypot(ndimage.sobel(xs, axis=0), ndimage.sobel(xs, axis=1))
            feats += [g.mean(), g.std()]
        img8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        for r in (1, 2):
            lbp = local_binary_pattern(img8, P=8, R=r, method="uniform")
            h, _ = np.histogram(lbp, bins=10, range=(0, 10))
            feats += list(h / max(h.sum(), 1))
        if self.layout:
            b = self.size // 4
            feats += list(x[: 4 * b, : 4 * b].reshape(4, b, 4, b).mean(axis=(1, 3)).ravel())
        return np.asarray(feats, dtype=np.float64)

    def extract(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self._one(im) for im in images])


@register_extractor("radiomics")
def _make_radiomics(arg: str = "", size: int = 128, **_) -> RadiomicsExtractor:
    return RadiomicsExtractor(size=size)


# ------------------------------------------------------------------------------------------- inception


class InceptionExtractor(FeatureExtractor):
    """torchmetrics' FID InceptionV3 (2048-d pool features). Needs torch-fidelity and the FID weights file."""

    name = "inception"
    standard = True  # standard FID / KID: raw 2048-d pool features, all images
    scaling = "raw"

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        weights = weights or os.environ.get(INCEPTION_ENV)
        how = (
            f"Supply the FID Inception weights file ({INCEPTION_WEIGHTS_FILE}, from "
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/) with "
            f"--inception_weights PATH or the environment variable {INCEPTION_ENV}, or use the offline "
            "default --features radiomics."
        )
        if not weights:
            raise MissingWeightsError(
                f"the 'inception' extractor needs pretrained weights, none given. {how}"
            )
        if not Path(weights).is_file():
            raise MissingWeightsError(f"Inception weights file not found: {weights}. {how}")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except Exception as e:  # torch-fidelity missing
            raise MissingWeightsError(
                f"the 'inception' extractor needs torch-fidelity (pip install torch-fidelity): {e}. {how}"
            ) from e
        self.weights = str(weights)
        self.device = device
        try:
            self.model = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=self.weights,
            ).to(device)
        except Exception as e:
            raise MissingWeightsError(
                f"could not build the FID Inception from {self.weights}: {type(e).__name__}: {e}. "
                "It needs torch-fidelity (pip install torch-fidelity) and the FID weights file."
            ) from e
        self.model.eval()

    @property
    def config(self) -> dict:
        return {"weights": Path(self.weights).name}

    def extract(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(images)[:, None].repeat(1, 3, 1, 1)
        x = (x * 255).round().to(torch.uint8).to(self.device)
        with torch.no_grad():
            f = self.model(x)
        f = f[0] if isinstance(f, (tuple, list)) else f
        return f.reshape(len(images), -1).double().cpu().numpy()


@register_extractor("inception")
def _make_inception(arg: str = "", inception_weights: str | None = None, device: str = "cpu", **_):
    return InceptionExtractor(weights=inception_weights or (arg or None), device=device)


# ------------------------------------------------------------------------------------------- CLIP


BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


class ClipExtractor(FeatureExtractor):
    """open_clip image-tower embeddings (L2-normalised).

    ``clip:<arch>:<pretrained tag>`` (e.g. ``clip:ViT-B-32:laion2b_s34b_b79k``), ``clip:<arch>`` with
    ``checkpoint=PATH`` (a local open_clip checkpoint), or ``clip:biomedclip`` (BiomedCLIP from the HF hub cache).
    """

    name = "clip"

    def __init__(self, spec: str = "", checkpoint: str | None = None, device: str = "cpu"):
        checkpoint = checkpoint or os.environ.get(CLIP_ENV)
        arch, _, tag = spec.partition(":")
        arch = arch or "ViT-B-32"
        how = (
            "Pass a local open_clip checkpoint with --clip_checkpoint PATH (or the environment variable "
            f"{CLIP_ENV}), or pre-download the weights into the open_clip / Hugging Face cache on a "
            "machine with network access; the offline default is --features radiomics."
        )
        try:
            import open_clip
        except ImportError as e:
            raise MissingWeightsError(f"the 'clip' extractor needs open_clip_torch: {e}. {how}") from e
        if checkpoint and not Path(checkpoint).is_file():
            raise MissingWeightsError(f"CLIP checkpoint not found: {checkpoint}. {how}")
        if arch.lower() == "biomedclip":
            arch, tag = BIOMEDCLIP, ""
        if not checkpoint and not tag and not arch.startswith("hf-hub:"):
            raise MissingWeightsError(
                f"the 'clip:{arch}' extractor needs pretrained weights: give a pretrained tag "
                f"(clip:{arch}:<tag>, tags: {open_clip.list_pretrained_tags_by_model(arch)[:4]}) or a checkpoint. {how}"
            )
        if not checkpoint:
            _check_hub_reachable_or_cached(open_clip, arch, tag, how)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=checkpoint or (tag or None), device=device
            )
        except Exception as e:
            what = checkpoint or (f"{arch} pretrained='{tag}'" if tag else arch)
            raise MissingWeightsError(
                f"could not load CLIP weights for {what}: {type(e).__name__}: {e}. {how}"
            ) from e
        self.model = model.eval()
        self.device = device
        self.spec = f"{arch}:{tag}" if tag else arch
        self.checkpoint = checkpoint
        vis = getattr(model, "visual", None)
        size = getattr(vis, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        norm = [t for t in getattr(preprocess, "transforms", []) if type(t).__name__ == "Normalize"]
        self.mean = list(norm[0].mean) if norm else [0.48145466, 0.4578275, 0.40821073]
        self.std = list(norm[0].std) if norm else [0.26862954, 0.26130258, 0.27577711]

    @property
    def config(self) -> dict:
        return {"model": self.spec, "checkpoint": Path(self.checkpoint).name if self.checkpoint else None}

    def extract(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images)[:, None].float()
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = x.clamp(0, 1).repeat(1, 3, 1, 1)
        x = (x - torch.tensor(self.mean)[None, :, None, None]) / torch.tensor(self.std)[None, :, None, None]
        with torch.no_grad():
            f = self.model.encode_image(x.to(self.device))
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return f.double().cpu().numpy()


def _host_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_hub_reachable_or_cached(open_clip, arch: str, tag: str, how: str) -> None:
    """Fail fast offline: without this, huggingface_hub retries for about a minute before giving up."""
    if arch.startswith("hf-hub:"):
        repo = arch[len("hf-hub:") :]
        files = ("open_clip_config.json",)
    else:
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        repo = (cfg.get("hf_hub") or "").rstrip("/")
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        if not repo:
            return  # URL-hosted weights: let open_clip try its own cache / download
    try:
        from huggingface_hub import try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
            return
    except Exception:
        return
    if not _host_reachable():
        raise MissingWeightsError(
            f"CLIP weights for {arch}{':' + tag if tag else ''} (Hugging Face repo {repo}) are not in the local cache "
            f"and huggingface.co is unreachable. {how}"
        )


@register_extractor("clip")
def _make_clip(arg: str = "", clip_checkpoint: str | None = None, device: str = "cpu", **_):
    return ClipExtractor(arg, checkpoint=clip_checkpoint, device=device)


# ------------------------------------------------------------------------------------------- torchxrayvision


class XRVExtractor(FeatureExtractor):
    """torchxrayvision DenseNet-121 (``densenet121-res224-all`` by default) penultimate 1024-d features."""

    name = "xrv"

    def __init__(self, weights: str = "", device: str = "cpu"):
        weights = weights or "densenet121-res224-all"
        try:
            import torchxrayvision as xrv
        except ImportError as e:
            raise MissingWeightsError(
                "the 'xrv' extractor needs torchxrayvision (pip install torchxrayvision) and its weights "
                f"'{weights}' in ~/.torchxrayvision (downloaded on first use with network access)"
            ) from e
        try:
            self.model = xrv.models.DenseNet(weights=weights).eval().to(device)
        except Exception as e:
            raise MissingWeightsError(
                f"could not load torchxrayvision weights '{weights}': {type(e).__name__}: {e}. Download them once "
                "with network access (they are cached in ~/.torchxrayvision) or use --features radiomics."
            ) from e
        self.weights = weights
        self.device = device

    @property
    def config(self) -> dict:
        return {"weights": self.weights}

    def extract(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images)[:, None].float()
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        x = (x * 2048.0 - 1024.0).to(self.device)  # torchxrayvision expects [-1024, 1024]
        with torch.no_grad():
            f = self.model.features2(x) if hasattr(self.model, "features2") else self.model.features(x)
        return f.reshape(len(images), -1).double().cpu().numpy()


@register_extractor("xrv")
def _make_xrv(arg: str = "", device: str = "cpu", **_):
    return XRVExtractor(arg, device=device)


# ------------------------------------------------------------------------------------------- cache


def extract_features(
    images: np.ndarray,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Features for ``images``, cached in ``cache_dir`` under (content hash of the images, extractor config)."""
    if cache_dir is None:
        return extractor(images, progress=progress)
    import hashlib

    if fingerprint is None:
        from .io import ImageSet

        fingerprint = ImageSet(np.asarray(images, dtype=np.float32)).fingerprint()
    key = hashlib.sha1(
        json.dumps(
            {"images": fingerprint, "name": extractor.name, "config": extractor.config}, sort_keys=True
        ).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"features_{extractor.name}_{key}.npy"
    if path.exists():
        return np.load(path)
    feats = extractor(images, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats
