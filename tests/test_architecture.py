"""Structure the design promises (docs/architecture.md): one-way imports with no cycle (function-level
imports included), only ``medsd/data`` opens image files, small modules and training functions, and
pipelines that are plain diffusers pipelines (config-held state, stock loaders)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "medsd"
LAYERS = {"data": 0, "models": 0, "errors": 0, "pipelines": 1, "metrics": 1, "training": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """medsd modules imported anywhere in a file (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_no_import_cycle_including_function_level_imports():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_flow_one_way():
    bad = []
    for name, targets in _graph().items():
        layer = LAYERS.get(name.split(".")[1]) if name.count(".") else None
        if layer is None:
            continue
        for t in targets - {"medsd"}:  # the root package only holds lazy exports and __version__
            t_layer = LAYERS.get(t.split(".")[1], 3) if t.count(".") else 3
            if t_layer > layer or (t_layer == layer and t.split(".")[1] != name.split(".")[1] and layer > 0):
                bad.append(f"{name} -> {t}")
    assert not bad, bad


def test_only_the_data_layer_opens_image_files():
    readers = ("Image.open(", "dcmread(", "nib.load(", "nibabel.load(", "imageio.", "tifffile.imread(")
    offenders = [
        f"{p.relative_to(ROOT)}: {r}"
        for p in PKG.rglob("*.py")
        if "data" != p.relative_to(PKG).parts[0]
        for r in readers
        if r in p.read_text()
    ]
    assert not offenders, offenders


def test_modules_and_training_functions_are_small():
    big = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    ]
    assert not big, f"modules over 600 lines: {big}"
    long = []
    for p in (PKG / "training").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"training functions over 80 lines: {long}"


def test_diffusers_is_not_patched_by_importing_medsd():
    import diffusers

    import medsd.pipelines.cddpm  # noqa: F401
    import medsd.pipelines.ddpm  # noqa: F401

    assert not hasattr(diffusers, "MedDDPMPipeline") and not hasattr(diffusers, "MedCDDPMPipeline")


# -- pipelines are diffusers-native ------------------------------------------------------------------------


def _light_pipe(mapping=None):
    from diffusers import DDPMScheduler

    from medsd.models import LightUNet2DModel
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4)
    sched = fast_scheduler(DDPMScheduler(num_train_timesteps=50).config)
    return MedDDPMPipeline(
        unet=unet, scheduler=sched, intensity_mapping=mapping, medsd_metadata={"family": "ddpm"}
    )


def test_plain_diffusers_load_and_save_keeps_the_intensity_mapping(tmp_path):
    from diffusers import DiffusionPipeline

    from medsd.data import WindowMapping
    from medsd.pipelines.ddpm import MedDDPMPipeline

    _light_pipe(WindowMapping(-1000.0, 400.0)).save_pretrained(tmp_path / "a")
    plain = DiffusionPipeline.from_pretrained(tmp_path / "a", trust_remote_code=True)
    plain.save_pretrained(tmp_path / "b")
    again = MedDDPMPipeline.from_pretrained(tmp_path / "b")
    assert again.intensity_mapping == WindowMapping(-1000.0, 400.0)
    assert again.medsd_metadata == {"family": "ddpm"}
    index = json.loads((tmp_path / "b" / "model_index.json").read_text())
    assert index["intensity_mapping"] == {"type": "window", "low": -1000.0, "high": 400.0}
    # from_pipe and components carry the state too
    derived = MedDDPMPipeline.from_pipe(again)
    assert derived.intensity_mapping == again.intensity_mapping
    assert set(again.components) == {"unet", "scheduler"}


def test_from_pretrained_takes_diffusers_loading_arguments(tmp_path):
    from medsd.pipelines.auto import MedPipeline
    from medsd.pipelines.ddpm import MedDDPMPipeline

    pipe = _light_pipe()
    pipe.save_pretrained(tmp_path)
    kwargs = dict(use_safetensors=True, variant=None, low_cpu_mem_usage=True)
    for loaded in (
        MedDDPMPipeline.from_pretrained(tmp_path, **kwargs),
        MedPipeline.from_pretrained(tmp_path, **kwargs),
    ):
        assert isinstance(loaded, MedDDPMPipeline)
        for a, b in zip(loaded.unet.parameters(), pipe.unet.parameters(), strict=True):
            torch.testing.assert_close(a, b)
    half = MedDDPMPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert half.unet.dtype == torch.float16


def test_text_to_xray_pipeline_is_a_stable_diffusion_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from medsd.data import WindowMapping
    from medsd.pipelines.auto import MedPipeline
    from medsd.pipelines.random_sd import save_random_sd_pipeline
    from medsd.pipelines.text2xray import TextToXRayPipeline

    base = save_random_sd_pipeline(tmp_path / "sd")
    pipe = TextToXRayPipeline.from_pretrained(
        base, intensity_mapping=WindowMapping(0, 4095), medsd_metadata={"resolution": 32}
    )
    assert isinstance(pipe, StableDiffusionPipeline)
    pipe.save_pretrained(tmp_path / "xray")
    index = json.loads((tmp_path / "xray" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"  # stock diffusers opens it
    stock = StableDiffusionPipeline.from_pretrained(tmp_path / "xray")
    assert type(stock) is StableDiffusionPipeline
    again = MedPipeline.from_pretrained(tmp_path / "xray")
    assert isinstance(again, TextToXRayPipeline) and again.intensity_mapping == WindowMapping(0, 4095)
    img = again(
        "a chest x-ray", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert img.images.shape == (1, 32, 32)


def test_diffusers_small_folder_opens_in_stock_ddpm_pipeline_without_medsd(tmp_path):
    """Issue #13: a UNet2DModel folder is a standard diffusers folder; medsd's extras ride along."""
    from diffusers import DDPMScheduler

    from medsd.data import WindowMapping
    from medsd.models.presets import build_unet
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    torch.manual_seed(0)
    unet = build_unet("diffusers-small", sample_size=16)
    sched = fast_scheduler(DDPMScheduler(num_train_timesteps=50).config)
    MedDDPMPipeline(unet=unet, scheduler=sched, intensity_mapping=WindowMapping(0, 255)).save_pretrained(
        tmp_path
    )
    assert not (tmp_path / "pipeline_medsd.py").exists()
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['medsd'] = None\n")
    code = textwrap.dedent(
        f"""
        import sys, torch
        try:
            import medsd
        except ImportError:
            pass
        else:
            raise SystemExit("medsd is importable")
        from diffusers import DDPMPipeline
        p = DDPMPipeline.from_pretrained({str(tmp_path)!r})
        p.set_progress_bar_config(disable=True)
        out = p(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        print(type(p).__name__, out.images.shape)
        """
    )
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-500:]
    assert out.stdout.strip().endswith("DDPMPipeline (1, 16, 16, 1)")
    # and medsd reopens the same folder with its extras
    again = MedDDPMPipeline.from_pretrained(tmp_path)
    assert isinstance(again, MedDDPMPipeline) and again.intensity_mapping == WindowMapping(0, 255)
