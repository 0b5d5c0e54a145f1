import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medsd.data import (
    CSVImageDataset,
    DataConfig,
    FolderImageDataset,
    HFImageDataset,
    ImageSettings,
    PromptTemplate,
    UInt8ImageCache,
    build_dataset,
    collate_items,
    patient_split,
)
from medsd.data.errors import MedImageError
from medsd.data.intensity import MinMaxMapping, PercentileMapping, WindowMapping
from medsd.data.phantoms import PhantomDataset, chest_phantom
from medsd.data.writers import write_png8, write_png16

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH = SHARED / "nih_cxr14"


def check_item(item, size):
    assert set(item) == {"pixel_values", "label", "prompt", "path", "patient_id"}
    x = item["pixel_values"]
    assert x.dtype == torch.float32 and x.shape == (1, size, size)
    assert -1.0 <= x.min() and x.max() <= 1.0


@pytest.fixture
def kaggle_tree(tmp_path):
    root = tmp_path / "chest_xray" / "train"
    for i in range(8):
        label = "PNEUMONIA" if i % 2 else "NORMAL"
        (root / label).mkdir(parents=True, exist_ok=True)
        write_png8(root / label / f"person{i // 2}_img{i}.png", chest_phantom(48, seed=i))
    return root


def test_prompt_template():
    t = PromptTemplate("a chest x-ray, {view} view, {label}")
    assert t.format(label="Pneumonia", view="PA") == "a chest x-ray, PA view, pneumonia"
    assert t.format(label="No_Finding") == "a chest x-ray, no finding"
    assert t.format(label="Effusion|Infiltration", view="") == "a chest x-ray, effusion, infiltration"
    assert t(label=None, view=None) == "a chest x-ray"
    assert PromptTemplate("{label}").format() is None
    with pytest.raises(MedImageError, match="template"):
        PromptTemplate("a {0} x-ray")


def test_patient_split_no_overlap():
    rng = np.random.default_rng(0)
    ids = [f"p{v}" for v in rng.integers(0, 60, 300)]
    tr, va, te = patient_split(ids, (0.8, 0.1, 0.1), seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(300))
    sides = [{ids[i] for i in part} for part in (tr, va, te)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert 0.65 < len(tr) / 300 < 0.9 and len(va) > 0 and len(te) > 0
    again = patient_split(ids, (0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(tr, patient_split(ids, (0.8, 0.1, 0.1), seed=1)[0])
    # no ids: split per item
    tr, va, te = patient_split([None] * 100, (0.5, 0.25, 0.25))
    assert (len(tr), len(va), len(te)) == (50, 25, 25)
    with pytest.raises(MedImageError, match="fractions"):
        patient_split(ids, (0.5, 0.1, 0.1))


def test_folder_dataset_labels_and_items(kaggle_tree):
    ds = FolderImageDataset(
        kaggle_tree, 32, prompt_template="a chest x-ray, {label}", patient_id_pattern=r"^(person\d+)_"
    )
    assert len(ds) == 8 and set(ds.labels) == {"NORMAL", "PNEUMONIA"}
    item = ds[1]
    check_item(item, 32)
    assert item["label"] == "NORMAL" and item["prompt"] == "a chest x-ray, normal"
    assert item["patient_id"] == "person1" and item["path"].endswith("NORMAL/person1_img2.png")
    # at native size the default 8-bit window maps the raw pixels exactly
    native = FolderImageDataset(kaggle_tree, 48)
    expected = torch.from_numpy(native.read_native(1) / 127.5 - 1.0).float()
    assert torch.allclose(native[1]["pixel_values"][0], expected, atol=1e-6)


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(MedImageError, match="empty: no image files found"):
        FolderImageDataset(tmp_path / "empty", 32)
    with pytest.raises(MedImageError, match="not a directory"):
        FolderImageDataset(tmp_path / "nope", 32)


def test_skip_bad_images_lists_skipped(kaggle_tree):
    (kaggle_tree / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (kaggle_tree / "NORMAL" / "tiny.png").write_bytes(b"")
    with pytest.raises(MedImageError, match="broken.png"):
        [FolderImageDataset(kaggle_tree, 32)[i] for i in range(10)]
    with pytest.warns(UserWarning, match="skipped 2 of 10 bad images"):
        ds = FolderImageDataset(kaggle_tree, 32, skip_bad_images=True)
    assert len(ds) == 8
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["broken.png", "tiny.png"]
    assert all(why for _, why in ds.skipped)
    with pytest.warns(UserWarning, match="skipped"):
        ds2, _ = build_dataset(
            DataConfig(source="folder", path=str(kaggle_tree), split="all", skip_bad_images=True)
        )
    assert len(ds2) == 8 and len(ds2.skipped) == 2


def test_image_keywords_are_image_settings(kaggle_tree, tmp_path):
    ds = FolderImageDataset(kaggle_tree, 40, crop="random", hflip=True, min_size=20, max_aspect=2.0)
    assert ds.settings == ImageSettings(40, crop="random", hflip=True, min_size=20, max_aspect=2.0)
    assert (ds.transform.resolution, ds.transform.crop, ds.min_size, ds.max_aspect) == (40, "random", 20, 2.0)
    with pytest.raises(TypeError, match=r"FolderImageDataset\(\) got unexpected keyword argument\(s\) cropp"):
        FolderImageDataset(kaggle_tree, 32, cropp="center")
    csv_path = write_csv(tmp_path / "m.csv", [{"file": str(p)} for p in ds.paths[:2]], ["file"])
    with pytest.raises(TypeError, match=r"CSVImageDataset\(\) got unexpected keyword argument\(s\) hlfip"):
        CSVImageDataset(csv_path, "file", allow_outside_root=True, hlfip=True)


def test_too_small_image_skipped_or_raises(kaggle_tree):
    write_png8(kaggle_tree / "NORMAL" / "small.png", np.zeros((10, 10)))
    ds = FolderImageDataset(kaggle_tree, 32, upscale=False)
    small = ds.paths.index(str(kaggle_tree / "NORMAL" / "small.png"))
    with pytest.raises(MedImageError, match="small.png: image is 10x10, smaller than the crop size 32x32"):
        ds[small]
    with pytest.warns(UserWarning):
        ds = FolderImageDataset(kaggle_tree, 32, upscale=False, skip_bad_images=True)
    assert [Path(p).name for p, _ in ds.skipped] == ["small.png"]


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_dataset_and_missing_column(tmp_path):
    rows = []
    for i in range(6):
        write_png16(tmp_path / f"im{i}.png", chest_phantom(40, seed=i))
        rows.append(
            {
                "file": f"im{i}.png",
                "dx": "Pneumonia" if i % 2 else "No Finding",
                "pid": str(i // 2),
                "view": "AP",
            }
        )
    csv_path = write_csv(tmp_path / "meta.csv", rows, ["file", "dx", "pid", "view"])
    ds = CSVImageDataset(
        csv_path,
        "file",
        "dx",
        patient_column="pid",
        resolution=24,
        mapping=WindowMapping(0, 65535),
        prompt_template="a chest x-ray, {view} view, {label}",
    )
    assert len(ds) == 6 and ds.patient_ids == ["0", "0", "1", "1", "2", "2"]
    item = ds[1]
    check_item(item, 24)
    assert item["prompt"] == "a chest x-ray, AP view, pneumonia" and item["patient_id"] == "0"
    with pytest.raises(
        MedImageError,
        match=r"meta.csv: column 'label' \(label_column\) not found; available columns: file, dx, pid, view",
    ):
        CSVImageDataset(csv_path, "file", "label")
    write_csv(tmp_path / "gone.csv", [{"file": "missing.png"}], ["file"])
    with pytest.raises(MedImageError, match="missing.png: file not found"):
        CSVImageDataset(tmp_path / "gone.csv", "file")[0]


@pytest.mark.skipif(not (NIH / "metadata.csv").is_file(), reason="shared NIH data not available")
def test_csv_dataset_on_shared_nih():
    cfg = DataConfig(
        source="csv",
        path=str(NIH / "metadata.csv"),
        label_column="label",
        patient_column="patient_id",
        prompt_template="a chest x-ray, {view} view, {label}",
        resolution=32,
        split="val",
        max_samples=20,
    )
    ds, mapping = build_dataset(cfg)
    assert isinstance(mapping, WindowMapping) and (mapping.low, mapping.high) == (0, 255)
    assert len(ds) == 20
    item = ds[0]
    check_item(item, 32)
    assert item["prompt"].startswith("a chest x-ray, ") and item["label"] is not None
    splits = {
        s: set(build_dataset(DataConfig(**{**cfg.to_dict(), "split": s, "max_samples": None}))[0].patient_ids)
        for s in ("train", "val", "test")
    }
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"]) and len(splits["train"]) > len(splits["val"])


def test_hf_imagefolder_and_streaming(kaggle_tree, tmp_path):
    pytest.importorskip("datasets")
    kw = dict(
        data_dir=str(kaggle_tree),
        label_column="label",
        resolution=32,
        prompt_template="a chest x-ray, {label}",
    )
    ds = HFImageDataset("imagefolder", load_kwargs={"cache_dir": str(tmp_path / "hf")}, **kw)
    assert len(ds) == 8 and set(ds.labels) == {"NORMAL", "PNEUMONIA"}
    item = ds[0]
    check_item(item, 32)
    assert item["prompt"] == f"a chest x-ray, {item['label'].lower()}" and item["path"].endswith(".png")
    folder = FolderImageDataset(kaggle_tree, 32)
    ref = folder[folder.paths.index(item["path"])]["pixel_values"]
    assert torch.allclose(item["pixel_values"], ref)

    stream = HFImageDataset("imagefolder", streaming=True, **kw)
    assert isinstance(stream, torch.utils.data.IterableDataset)
    with pytest.raises(TypeError):
        len(stream)
    items = list(stream)
    assert len(items) == 8 and sorted(i["path"] for i in items) == sorted(folder.paths)
    batch = next(iter(torch.utils.data.DataLoader(stream, batch_size=4, collate_fn=collate_items)))
    assert batch["pixel_values"].shape == (4, 1, 32, 32) and len(batch["label"]) == 4

    with pytest.raises(MedImageError, match="available columns"):
        HFImageDataset("imagefolder", data_dir=str(kaggle_tree), image_column="img", streaming=True)


def test_build_dataset_hf_streaming_split_and_fit(kaggle_tree):
    pytest.importorskip("datasets")
    base = dict(
        source="hf", path="imagefolder", data_dir=str(kaggle_tree), label_column="label", resolution=32
    )
    parts = {}
    # a fixed window: with hashed paths (a temporary folder) a small part may come out empty, with nothing to fit
    fixed = dict(streaming=True, split_fractions=(0.5, 0.25, 0.25), intensity="window", window=(0.0, 255.0))
    for split in ("train", "val", "test"):
        ds, _ = build_dataset(DataConfig(**base, split=split, **fixed))
        parts[split] = [it["path"] for it in ds]
    # every image lands in exactly one part, and the hash split is stable
    all_paths = sorted(p for v in parts.values() for p in v)
    assert all_paths == sorted(FolderImageDataset(kaggle_tree, 32).paths)
    ds, _ = build_dataset(DataConfig(**base, split="val", **fixed))
    assert [it["path"] for it in ds] == parts["val"]
    ds, m = build_dataset(DataConfig(**base, streaming=True, split="all", intensity="minmax", max_samples=3))
    assert isinstance(m, MinMaxMapping) and m.fitted and len(list(ds)) == 3
    assert 0 <= m.low < m.high <= 255


def test_build_dataset_phantom_and_percentile(kaggle_tree):
    ds, m = build_dataset(DataConfig(source="phantom", phantom_count=50, resolution=32, split="test"))
    assert isinstance(ds, PhantomDataset) and len(ds) == 5 and (m.low, m.high) == (0.0, 1.0)
    check_item(ds[0], 32)
    ds, m = build_dataset(
        DataConfig(source="folder", path=str(kaggle_tree), intensity="percentile", split="all")
    )
    assert isinstance(m, PercentileMapping) and 0 <= m.low < m.high <= 255
    assert ds.mapping is m
    with pytest.raises(MedImageError, match="source"):
        build_dataset(DataConfig(source="zip"))
    with pytest.raises(MedImageError, match="unknown keys"):
        DataConfig.from_dict({"sorce": "phantom"})


def test_uint8_cache(kaggle_tree):
    ds = FolderImageDataset(kaggle_tree, 32, prompt_template="{label}")
    cache = UInt8ImageCache.from_dataset(ds, progress=False)
    assert len(cache) == 8 and cache.images.dtype == torch.uint8 and cache.images.shape == (8, 1, 32, 32)
    batch = cache.get_batch([2, 5], device="cpu")
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (2, 1, 32, 32)
    assert torch.allclose(batch["pixel_values"][1], ds[5]["pixel_values"], atol=1 / 127.5)
    assert batch["label"] == [ds[2]["label"], ds[5]["label"]] and batch["prompt"][0] == ds[2]["label"].lower()
    assert cache.to("cpu").pin_memory() is cache
    ph = UInt8ImageCache.from_dataset(PhantomDataset(6, size=16), progress=False)
    assert ph.get_batch(torch.tensor([0]))["pixel_values"].min() >= -1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uint8_cache_on_gpu(kaggle_tree):
    cache = UInt8ImageCache.from_dataset(FolderImageDataset(kaggle_tree, 32), progress=False).to("cuda")
    assert cache.get_batch([0, 1])["pixel_values"].device.type == "cuda"


def test_parse_source_reads_the_one_source_grammar(tmp_path):
    from medsd.data import parse_source

    assert (parse_source("phantom").kind, parse_source("phantom").phantom_kind) == ("phantom", "chest")
    assert parse_source("phantom-ct").phantom_kind == "ct"
    assert (parse_source("hf:owner/name").kind, parse_source("hf:owner/name").path) == ("hf", "owner/name")
    assert parse_source("a/metadata.csv").kind == "csv"
    assert parse_source(str(tmp_path)).kind == "folder"
    assert parse_source(str(tmp_path), streaming=True).data_dir == str(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    spec = parse_source(str(tmp_path))
    assert (spec.kind, spec.path, spec.data_dir) == ("hf", "imagefolder", str(tmp_path))
    assert parse_source("owner/name").kind == "hf"  # not a folder: a datasets id
