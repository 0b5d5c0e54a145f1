"""Paired (full-reference) image metrics and the per-class synthetic-vs-real set table.

PSNR, SSIM and MS-SSIM come from torchmetrics (functional API); LPIPS from torchmetrics when its backbone weights
are available. Images are ``[H, W]`` or ``[N, H, W]`` float arrays in [0, 1] (data range 1).
"""

from __future__ import annotations

import numpy as np

from .features import MissingWeightsError

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _as_tensor(x):
    import torch

    return torch.as_tensor(_as_stack(x))[:, None]


def _as_stack(x) -> np.ndarray:
    """[H, W], [N, H, W] or [N, 1, H, W] -> float32 [N, H, W]."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    return x[None] if x.ndim == 2 else x


def ms_ssim_config(side: int) -> dict:
    """Kernel size, sigma and betas for MS-SSIM that fit an image of the given (smallest) side.

    torchmetrics needs ``side > (kernel_size - 1) * 2**(scales - 1)``. We keep the standard 11-px Gaussian
    (sigma 1.5) and 5 scales when they fit, otherwise drop the coarsest scales (then try kernels 7, 5, 3) and the
    coarsest scales until it fits (the smallest scale must still be at least one kernel wide); the remaining
    standard betas are renormalised to sum to 1. 64 px -> kernel 11, 3 scales; 128 px -> kernel 11, 4 scales;
    >160 px -> the standard 5 scales.
    """
    for k, sigma in ((11, 1.5), (7, 1.5), (5, 1.0), (3, 0.8)):
        for scales in (5, 4, 3, 2):
            if side > (k - 1) * 2 ** (scales - 1) and side // 2 ** (scales - 1) >= k:
                betas = np.asarray(MS_SSIM_BETAS[:scales])
                return {
                    "kernel_size": k,
                    "sigma": sigma,
                    "betas": tuple(float(b) for b in betas / betas.sum()),
                }
    raise ValueError(f"image side {side} is too small for MS-SSIM")


def psnr(pred, target, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (torchmetrics), averaged over the batch (per-image PSNR, then mean)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = _as_tensor(pred), _as_tensor(target)
    vals = peak_signal_noise_ratio(p, t, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return float(vals.mean())


def ssim(pred, target, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (torchmetrics, Gaussian 11x11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _as_tensor(pred), _as_tensor(target)
    k = min(kernel_size, (min(p.shape[-2:]) // 2) * 2 - 1)
    return float(structural_similarity_index_measure(p, t, data_range=data_range, kernel_size=k, sigma=sigma))


def ssim_per_image(pred, target, data_range: float = 1.0) -> np.ndarray:
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _as_tensor(pred), _as_tensor(target)
    k = min(11, (min(p.shape[-2:]) // 2) * 2 - 1)
    v = structural_similarity_index_measure(p, t, data_range=data_range, kernel_size=k, reduction="none")
    return v.double().numpy().reshape(-1)


def ms_ssim_per_image(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Per-image MS-SSIM (torchmetrics) with :func:`ms_ssim_config` for the image size."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    p, t = _as_tensor(pred), _as_tensor(target)
    cfg = ms_ssim_config(min(p.shape[-2:]))
    v = multiscale_structural_similarity_index_measure(
        p,
        t,
        data_range=data_range,
        kernel_size=cfg["kernel_size"],
        sigma=cfg["sigma"],
        betas=cfg["betas"],
        reduction="none",
        normalize="relu",
    )
    return v.double().numpy().reshape(-1)


def ms_ssim(pred, target, data_range: float = 1.0) -> float:
    return float(ms_ssim_per_image(pred, target, data_range).mean())


def mae(pred, target) -> float:
    return float(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64)).mean())


def mse(pred, target) -> float:
    return float(((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2).mean())


def edge_sharpness(images) -> float:
    """Mean Sobel gradient magnitude on [0, 1] images (higher = sharper), averaged over images. Hand-written.

    This is *not* the "acutance" of Med-cDiff (whose reported values of 3-23 come from its own, unpublished
    implementation); medsd names it for what it computes. Compare it between sets at the same resolution only.
    """
    from scipy import ndimage

    x = _as_stack(images).astype(np.float64)
    vals = [np.hypot(ndimage.sobel(im, axis=0), ndimage.sobel(im, axis=1)).mean() for im in x]
    return float(np.mean(vals))


def acutance(images) -> float:
    """Old name of :func:`edge_sharpness` (mean Sobel magnitude; not Med-cDiff's acutance). Kept for callers."""
    return edge_sharpness(images)


_LPIPS_CACHE: dict = {}
LPIPS_NETS = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


def _lpips_metric(net: str, weights: str | None):
    """torchmetrics' LPIPS; with ``weights`` (a torchvision backbone state-dict file) it is loaded from that file.

    torchvision looks for the backbone in ``<torch hub dir>/checkpoints/<file name of its URL>``; a temporary hub
    folder with a link of that name to ``weights`` makes torchvision load the user's file instead of downloading.
    The LPIPS linear layers ship with torchmetrics.
    """
    import os
    import tempfile

    import torch

    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net: expected one of {sorted(LPIPS_NETS)}, got {net!r}")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    if weights is None:
        return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    if not os.path.isfile(weights):
        raise MissingWeightsError(f"--lpips_weights: file not found: {weights}")
    import torchvision

    url = getattr(torchvision.models, LPIPS_NETS[net][1]).DEFAULT.url
    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="medsd_lpips_") as hub:
        os.makedirs(os.path.join(hub, "checkpoints"))
        os.symlink(os.path.abspath(weights), os.path.join(hub, "checkpoints", os.path.basename(url)))
        torch.hub.set_dir(hub)
        try:
            return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
        except Exception as e:
            raise MissingWeightsError(
                f"--lpips_weights {weights}: could not load it as the torchvision {LPIPS_NETS[net][0]} backbone "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e
        finally:
            torch.hub.set_dir(old)


def lpips(pred, target, net: str = "alex", weights: str | None = None) -> float:
    """LPIPS (torchmetrics, ``normalize=True`` on [0, 1] images repeated to 3 channels).

    ``weights``: the torchvision backbone file (e.g. ``alexnet-owt-7be5be79.pth``); without it the backbone must
    be in the torch hub cache. Offline without either it raises :class:`MissingWeightsError` saying so.
    """
    import torch

    key = (net, weights)
    if key not in _LPIPS_CACHE:
        try:
            _LPIPS_CACHE[key] = _lpips_metric(net, weights)
        except MissingWeightsError:
            raise
        except Exception as e:
            raise MissingWeightsError(
                f"LPIPS needs the pretrained torchvision '{net}' backbone weights: give the file with "
                f"--lpips_weights PATH, or put it in the torch hub cache ({torch.hub.get_dir()}/checkpoints); "
                f"they could not be loaded offline ({type(e).__name__}: {str(e)[:160]})."
            ) from e
    p = _as_tensor(pred).repeat(1, 3, 1, 1).clamp(0, 1)
    t = _as_tensor(target).repeat(1, 3, 1, 1).clamp(0, 1)
    with torch.no_grad():
        return float(_LPIPS_CACHE[key](p, t))


def paired_metrics(pred, target, with_lpips: bool = False, lpips_weights: str | None = None) -> dict:
    """PSNR, SSIM, MS-SSIM, MAE, MSE, edge sharpness of both and their ratio; LPIPS if asked (else a note why not).

    The edge-sharpness values are also given under their old ``acutance_*`` keys.

    ``pred``/``target``: ``[H, W]`` or ``[N, H, W]`` in [0, 1], paired by index.
    """
    pred = _as_stack(pred)
    target = _as_stack(target)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    a_p, a_t = edge_sharpness(pred), edge_sharpness(target)
    out = {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "ms_ssim": ms_ssim(pred, target),
        "mae": mae(pred, target),
        "mse": mse(pred, target),
        "edge_sharpness_pred": a_p,
        "edge_sharpness_target": a_t,
        "edge_sharpness_ratio": a_p / a_t if a_t > 0 else float("nan"),
        "acutance_pred": a_p,
        "acutance_target": a_t,
        "acutance_ratio": a_p / a_t if a_t > 0 else float("nan"),
    }
    if with_lpips:
        try:
            out["lpips"] = lpips(pred, target, weights=lpips_weights)
        except MissingWeightsError as e:
            out["lpips"] = None
            out["lpips_note"] = str(e)
    return out


def class_set_table(
    fake: np.ndarray,
    fake_labels,
    real: np.ndarray,
    real_labels,
    max_pairs: int = 500,
    seed: int = 0,
) -> list[dict]:
    """Per class, mean MSE and SSIM between synthetic and real images of that class (Abeywardane et al.).

    Uses all (fake, real) pairs when there are at most ``max_pairs``, else ``max_pairs`` pairs sampled with a fixed
    seed. Also reports the real-vs-real baseline on pairs of distinct real images of the class.
    """
    fake = np.asarray(fake, np.float32)
    real = np.asarray(real, np.float32)
    fl = np.asarray([str(x) for x in fake_labels])
    rl = np.asarray([str(x) for x in real_labels])
    rng = np.random.default_rng(seed)
    rows = []
    for cls in sorted(set(fl) & set(rl)):
        fi, ri = np.flatnonzero(fl == cls), np.flatnonzero(rl == cls)
        pairs = _pairs(fi, ri, max_pairs, rng)
        rr = _pairs(ri, ri, max_pairs, rng, distinct=True)
        row = {"class": str(cls), "n_fake": int(len(fi)), "n_real": int(len(ri)), "n_pairs": int(len(pairs))}
        row.update(_pair_stats(fake, real, pairs, "fake_vs_real"))
        if len(rr):
            row.update(_pair_stats(real, real, rr, "real_vs_real"))
        rows.append(row)
    return rows


def _pairs(a_idx, b_idx, max_pairs, rng, distinct=False) -> np.ndarray:
    if len(a_idx) == 0 or len(b_idx) == 0:
        return np.zeros((0, 2), int)
    total = len(a_idx) * len(b_idx)
    if total <= max_pairs:
        p = np.array([(a, b) for a in a_idx for b in b_idx])
    else:
        p = np.stack([rng.choice(a_idx, max_pairs), rng.choice(b_idx, max_pairs)], axis=1)
    if distinct:
        p = p[p[:, 0] != p[:, 1]]
    return p


def _pair_stats(x, y, pairs, prefix) -> dict:
    if len(pairs) == 0:
        return {}
    a, b = x[pairs[:, 0]], y[pairs[:, 1]]
    m = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2))
    s = np.concatenate([ssim_per_image(a[i : i + 256], b[i : i + 256]) for i in range(0, len(a), 256)])
    return {
        f"{prefix}_mse": float(m.mean()),
        f"{prefix}_mse_std": float(m.std()),
        f"{prefix}_ssim": float(s.mean()),
        f"{prefix}_ssim_std": float(s.std()),
    }
