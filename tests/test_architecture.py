"""Structure the design promises (docs/architecture.md): one-way imports with no cycle (function-level
imports included), only ``medsd/data`` opens image files, small modules and functions, and
pipelines that are plain diffusers pipelines (config-held state, stock loaders)."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "medsd"
LAYERS = {
    "data": 0,
    "models": 0,
    "errors": 0,
    "flags": 0,
    "run_folder": 0,
    "pipelines": 1,
    "metrics": 1,
    "training": 2,
}


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


def test_modules_and_functions_are_small():
    big = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    ]
    assert not big, f"modules over 600 lines: {big}"
    long = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                name = f"{p.relative_to(ROOT).as_posix()}:{node.name}"
                if length > 80:
                    long.append(f"{name} (line {node.lineno}, {length} lines)")
    assert not long, f"functions over 80 lines: {long}"


def test_every_training_family_builds_its_data_through_build_training_data(monkeypatch):
    """One data road: SD LoRA, like DDPM and cDDPM, reads its source through ``build_training_data`` (so
    ``--train_labels`` and every data flag apply); no family calls ``build_dataset`` or reads CSV itself."""
    import medsd.training.data_args as data_args
    from medsd.training.sd_lora import SDLoRATrainConfig
    from medsd.training.sd_lora_data import build_source_dataset

    for p in (PKG / "training").rglob("*.py"):
        if p.name != "data_args.py":
            text = p.read_text()
            assert "build_dataset(" not in text and "csv.reader" not in text, p
    seen = []
    real = data_args.build_training_data
    monkeypatch.setattr(data_args, "build_training_data", lambda *a, **k: seen.append(a) or real(*a, **k))
    import medsd.training.sd_lora_data as sd_data

    monkeypatch.setattr(sd_data, "build_training_data", data_args.build_training_data)
    dataset, _ = build_source_dataset(
        SDLoRATrainConfig(phantom_count=6, resolution=16, train_labels="opacity")
    )
    assert len(seen) == 1 and set(dataset.labels) == {"opacity"}


def test_no_test_skips_because_a_medsd_module_fails_to_import():
    """``importorskip`` is for optional third-party packages: a broken medsd module must fail, not skip."""
    tests = Path(__file__).resolve().parent
    found = []
    for p in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "importorskip"
                and node.args
            ):
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "medsd":
                    found.append(f"{p.name}:{node.lineno}")
    assert not found, f"importorskip of medsd modules: {found}"


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
    """A UNet2DModel folder is a standard diffusers folder; medsd's extras ride along."""
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


# -- one data path: evaluation reads sources only through medsd.data ----------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz"}
SOURCE_LISTING_CALLS = {
    "load_dataset",
    "load_from_disk",
    "walk",
    "rglob",
    "glob",
    "iterdir",
    "scandir",
    "listdir",
}
EVAL_COMMANDS = ("eval", "cddpm_eval", "xray_table", "reader_study")
"""medsd.commands modules that evaluate: their test data comes from medsd.data, never from medsd.training."""


def _constants(tree: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_the_data_layer_lists_image_extensions():
    offenders = []
    for p in PKG.rglob("*.py"):
        if p.relative_to(PKG).parts[0] == "data":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                exts = [c for c in _constants(node) if c.lower() in IMAGE_SUFFIXES]
                if len(exts) >= 2:
                    offenders.append(f"{p.relative_to(ROOT)}:{node.lineno} {exts}")
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                offenders += [f"{p.relative_to(ROOT)}:{node.lineno} {n}" for n in names if "EXTENSION" in n]
    assert not offenders, offenders


def test_metrics_read_no_source_themselves():
    """No source grammar (hf:, phantom names, .csv), no folder walking and no `datasets` loading in
    medsd/metrics: load_image_set builds its sets with medsd.data.parse_source / build_dataset."""
    from medsd.data.build import PHANTOM_SOURCES

    offenders = []
    for p in (PKG / "metrics").rglob("*.py"):
        tree = ast.parse(p.read_text())
        where = p.relative_to(ROOT)
        for c in _constants(tree):
            if c.startswith("hf:") or c in PHANTOM_SOURCES or c.lower() in (".csv", "metadata.csv"):
                offenders.append(f"{where}: source grammar {c!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in SOURCE_LISTING_CALLS:
                    offenders.append(f"{where}:{node.lineno} {name}()")
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [
                    f"{where}:{node.lineno} import {m}" for m in mods if m.split(".")[0] == "datasets"
                ]
    assert not offenders, offenders
    graph = _graph()
    assert "medsd.data.build" in graph["medsd.metrics.io"]


def test_evaluation_commands_do_not_import_training():
    graph = _graph()
    bad = {
        f"medsd.commands.{m}": sorted(
            t for t in graph[f"medsd.commands.{m}"] if t.startswith("medsd.training")
        )
        for m in EVAL_COMMANDS
    }
    assert not any(bad.values()), bad


def _png_folder(root: Path) -> Path:
    """Non-square 8-bit PNGs of different sizes in two label folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 30), (24, 52), (33, 33), (64, 48), (20, 28), (50, 36)]):
        label = "pneumonia" if i % 2 else "normal"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _tensors01(dataset) -> torch.Tensor:
    return (torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])[:, 0] + 1) / 2


@pytest.mark.parametrize("intensity", [None, "minmax", "percentile"])
def test_evaluation_reads_a_folder_exactly_as_training_does(tmp_path, intensity):
    from medsd.data import build_dataset, source_config
    from medsd.metrics import load_image_set
    from medsd.training.data_args import build_training_data
    from medsd.training.ddpm import DDPMTrainConfig

    folder = _png_folder(tmp_path / "imgs")
    kw = {} if intensity is None else {"intensity": intensity}
    evaluated = load_image_set(folder, size=16, **kw)
    trained, mapping = build_training_data(
        DDPMTrainConfig(train_data=str(folder), resolution=16, split="all", **kw), cache=False
    )
    assert evaluated.images.shape == (6, 16, 16)
    assert torch.equal(torch.from_numpy(evaluated.images), _tensors01(trained).clamp(0, 1))
    assert evaluated.labels == trained.labels and evaluated.paths == trained.paths
    assert evaluated.intensity == mapping.to_dict()
    # the same through a plain DataConfig, and a training config's DataConfig given to the evaluation
    plain, _ = build_dataset(source_config(str(folder), resolution=16, split="all", **kw))
    assert torch.equal(_tensors01(plain), _tensors01(trained))
    cfg = DDPMTrainConfig(
        train_data=str(folder), resolution=16, split="test", split_fractions=(0.5, 0.0, 0.5), seed=3, **kw
    ).data_config()
    test_part, _ = build_dataset(cfg)
    again = load_image_set(folder, data=cfg)
    assert (
        len(again) == 3
        and again.paths == test_part.paths
        and torch.equal(torch.from_numpy(again.images), _tensors01(test_part))
    )


def test_evaluation_of_a_csv_keeps_labels_and_patients(tmp_path):
    import csv

    import numpy as np

    from medsd.data import build_dataset, source_config
    from medsd.metrics import load_image_set

    folder = _png_folder(tmp_path)
    rows = [
        {"filename": str(p.relative_to(tmp_path)), "label": p.parent.name, "patient_id": f"pt{i // 2}"}
        for i, p in enumerate(sorted(folder.rglob("*.png")))
    ]
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    s = load_image_set(tmp_path, size=16, label="pneumonia")  # a folder with metadata.csv: read through it
    assert s.labels == ["pneumonia"] * 3
    expect = [r["patient_id"] for r in rows if r["label"] == "pneumonia"]
    assert s.patient_ids == expect
    ds, _ = build_dataset(
        source_config(str(tmp_path / "metadata.csv"), resolution=16, split="all", label_column="label")
    )
    pick = [i for i, lab in enumerate(ds.labels) if lab == "pneumonia"]
    assert np.array_equal(s.images, _tensors01(ds.select(pick)).numpy())
    from medsd.metrics.subsample import stratified_subsample

    sub = load_image_set(tmp_path / "metadata.csv", size=16, max_images=3, seed=1)
    chosen = stratified_subsample(6, 3, [r["label"] for r in rows], [r["patient_id"] for r in rows], seed=1)
    assert [p.endswith(rows[i]["filename"]) for p, i in zip(sub.paths, chosen, strict=True)] == [True] * 3
    assert sub.patient_ids == [rows[i]["patient_id"] for i in chosen]


def test_evaluation_of_phantoms_matches_the_phantom_dataset():
    from medsd.data import PhantomDataset
    from medsd.metrics import load_image_set

    s = load_image_set("phantom-ct", size=16, seed=5)
    ds = PhantomDataset(1000, size=16, kind="ct", seed=5)
    assert len(s) == 1000 and s.labels == ds.labels
    assert torch.equal(torch.from_numpy(s.images[:4]), _tensors01(ds.select(range(4))))


def test_a_missing_evaluation_source_is_named(tmp_path):
    from medsd.data import MedImageError
    from medsd.metrics import load_image_set

    with pytest.raises(MedImageError, match="nope: image source not found"):
        load_image_set(str(tmp_path / "nope"), size=16)


# -- one place for each fact -------------------------------------------------------------------------------


def _config_field_names() -> set[str]:
    from medsd.data.build import DataConfig
    from medsd.flags import settable_fields
    from medsd.metrics.evaluate import EvalConfig
    from medsd.training.cddpm import CDDPMTrainConfig
    from medsd.training.ddpm import DDPMTrainConfig
    from medsd.training.sd_lora_config import SDLoRATrainConfig

    classes = (DataConfig, EvalConfig, CDDPMTrainConfig, DDPMTrainConfig, SDLoRATrainConfig)
    return {f.name for cls in classes for f in settable_fields(cls)}


def _table_strings(node: ast.AST) -> list[str]:
    """The string members of a table literal: dict keys, tuple / list / set items (nested, and inside calls
    such as ``frozenset({...})`` or ``dict.fromkeys((...), 0)``)."""
    if isinstance(node, ast.Dict):  # the keys, and what a ``**`` unpacks
        keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        return keys + [s for k, v in zip(node.keys, node.values) if k is None for s in _table_strings(v)]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in ([e.value] if isinstance(e, ast.Constant) else _table_strings(e))
                if isinstance(s, str)]  # fmt: skip
    if isinstance(node, ast.Call):
        return [s for a in node.args for s in _table_strings(a)]
    if isinstance(node, ast.DictComp | ast.SetComp | ast.ListComp):
        return [s for g in node.generators for s in _table_strings(g.iter)]
    return []


def _field_name_tables(source: str, fields: set[str]) -> list[str]:
    """Module- and class-level constants whose string members are mostly config field names, and functions
    returning such a table: a field's meaning kept away from the field, keyed by its name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        bodies = [node.body] if isinstance(node, ast.Module | ast.ClassDef) else []
        values = [
            (s.lineno, s.value) for body in bodies for s in body if isinstance(s, ast.Assign | ast.AnnAssign)
        ]
        if isinstance(node, ast.FunctionDef):  # a function returning a static table (not a record of values)
            returns = [r.value for r in ast.walk(node) if isinstance(r, ast.Return)]
            values += [
                (r.lineno, r)
                for r in returns
                if isinstance(r, ast.Dict) and not any(isinstance(v, ast.Attribute) for v in r.values)
            ]
        for lineno, value in values:
            strings = _table_strings(value) if value is not None else []
            named = [s for s in strings if s in fields]
            if named and len(named) >= 0.75 * len(strings):
                found.append(f"{lineno}: {sorted(set(named))[:4]}")
    return found


def test_no_table_keyed_by_config_field_names():
    """Help, range, choices, resume policy, aliases and secrecy are each declared with the field
    (``medsd.flags.flag``), never in a table keyed by field names."""
    fields = _config_field_names()
    planted = textwrap.dedent(
        """
        SECRET = ("hub_token",)
        _AT_LEAST = {**dict.fromkeys(("max_train_steps", "train_batch_size"), 1), "logging_steps": 1}
        FREE = frozenset({"output_dir", "report_to", "validation_prompt"})
        def _choices():
            return {"lr_scheduler": ("constant", "cosine"), "crop": ("center", "random")}
        """
    )
    assert len(_field_name_tables(planted, fields)) == 4  # the check finds each kind of table
    offenders = [
        f"{p.relative_to(ROOT)}:{hit}"
        for p in PKG.rglob("*.py")
        for hit in _field_name_tables(p.read_text(), fields)
    ]
    assert not offenders, offenders


def test_aliases_are_option_strings_not_fields(tmp_path):
    from medsd.flags import field_meta, settable_fields
    from medsd.training.config import parse_config, save_config
    from medsd.training.ddpm import DDPMTrainConfig

    aliases = {
        a.name
        for f in settable_fields(DDPMTrainConfig)
        for a in field_meta(DDPMTrainConfig, f.name)["aliases"]
    }
    assert {"data_split", "random_flip", "center_crop", "ddpm_num_steps", "logger", "dataset_name"} <= aliases
    assert not aliases & {f.name for f in dataclasses.fields(DDPMTrainConfig)}
    cfg = parse_config(DDPMTrainConfig, ["--random_flip", "--logger", "none", "--output_dir", str(tmp_path)])
    save_config(cfg, tmp_path / "c.yaml")
    saved = (tmp_path / "c.yaml").read_text()
    assert (
        "hflip: true" in saved and "report_to: none" in saved and not any(f"{a}:" in saved for a in aliases)
    )


RUN_FOLDER_NAMES = ("checkpoint-", "medsd_checkpoint.json", ".tmp-medsd.lock", ".tmp-final", ".trash-")


def test_only_the_run_folder_module_spells_its_names():
    """Checkpoint, lock, stage and trash names are spelled only in medsd/run_folder.py; in training, so are
    logs/ and samples/ (every layer asks ``RunFolder``)."""
    offenders = []
    for p in PKG.rglob("*.py"):
        if p == PKG / "run_folder.py":
            continue
        training = p.relative_to(PKG).parts[0] == "training"
        for c in _constants(ast.parse(p.read_text())):
            if c.startswith(RUN_FOLDER_NAMES) or (
                training and c in ("logs", "samples", "train_summary.json")
            ):
                offenders.append(f"{p.relative_to(ROOT)}: {c!r}")
    assert not offenders, offenders
