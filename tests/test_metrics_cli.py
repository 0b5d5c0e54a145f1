"""`medsd eval` end to end on small phantom folders, image-set loading, and the offline weights message."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import medsd.data.phantoms as phantoms
from medsd.commands import eval as eval_cmd
from medsd.metrics import load_image_set

S = 64


def _save(path, x01):
    from PIL import Image

    Image.fromarray(np.clip(np.rint(x01 * 255), 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    for name, seeds in {"real": range(0, 24), "train": range(100, 130), "fake": range(200, 222)}.items():
        (root / name).mkdir()
        for s in seeds:
            _save(root / name / f"img_{s:04d}.png", phantoms.chest_phantom(S, seed=s))
    # plant an exact copy of a training image among the fakes
    _save(root / "fake" / "copy_0105.png", phantoms.chest_phantom(S, seed=105))
    (root / "ct").mkdir()
    for s in range(300, 324):
        _save(root / "ct" / f"ct_{s}.png", phantoms.ct_phantom(S, seed=s))
    return root


def _args(folders, out, *extra):
    return [
        "--real",
        str(folders / "real"),
        "--fake",
        str(folders / "fake"),
        "--out",
        str(out),
        "--size",
        str(S),
        "--kid_subsets",
        "5",
        "--diversity_pairs",
        "20",
        "--quiet",
        *extra,
    ]


def test_eval_end_to_end_with_memorisation(folders, tmp_path, capsys):
    out = tmp_path / "ev"
    audit = ("--train", str(folders / "train"), "--copy_quantile", "0.05", "--planted_per_kind", "2")
    code = eval_cmd.main(_args(folders, out, *audit))
    assert code == 0  # copies are reported but only fail the run with --fail_on_copies
    rep = json.loads((out / "report.json").read_text())
    assert rep["sets"]["real"]["n_images"] == 24 and rep["sets"]["fake"]["n_images"] == 23
    d = rep["distribution"]["radiomics"]
    assert d["frechet_distance"] >= 0 and "precision" in d and "settings" in d
    mem = rep["memorisation"]
    planted = [c for c in mem["copies"] if c["generated_path"].endswith("copy_0105.png")]
    assert len(planted) == 1 and planted[0]["train_path"].endswith("img_0105.png")
    # phantoms are alike: at a 5% held-out quantile per detector a few of the 22 new ones are flagged too
    assert mem["n_copies"] <= 3 and mem["calibration"]["n_heldout"] == 24 and len(mem["top_pairs"]) == 8
    assert set(mem["self_test"]["kinds"]) >= {"hflip", "shift", "crop", "rotate", "gamma", "noise"}
    assert rep["degenerate"]["fake"] == 0
    md = (out / "report.md").read_text()
    assert "Memorisation audit" in md and "radiomics" in md and "copy_0105.png" in md
    for fig in rep["figures"].values():
        assert (out / fig).is_file()
    assert list((out / "cache").glob("features_radiomics_*.npy"))
    code = eval_cmd.main(_args(folders, out, *audit, "--fail_on_copies", "--no_image_figures"))
    assert code == 3
    assert "copy training images" in capsys.readouterr().err


def test_eval_other_modality_is_far(folders, tmp_path):
    eval_cmd.main(_args(folders, tmp_path / "a"))
    r_same = json.loads((tmp_path / "a" / "report.json").read_text())["distribution"]["radiomics"]
    args = _args(folders, tmp_path / "b")
    args[args.index("--fake") + 1] = str(folders / "ct")
    eval_cmd.main(args)
    r_ct = json.loads((tmp_path / "b" / "report.json").read_text())["distribution"]["radiomics"]
    assert r_ct["frechet_distance"] > 10 * r_same["frechet_distance"]


def test_inception_offline_cli_exit_2_no_traceback(folders, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSD_INCEPTION_WEIGHTS", raising=False)
    cmd = [
        sys.executable,
        "-m",
        "medsd.commands.eval",
        *_args(folders, tmp_path / "inc", "--features", "inception"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "missing weights" in p.stderr and "--inception_weights" in p.stderr
    assert not (tmp_path / "inc" / "report.json").exists()


def test_missing_source_exit_2(tmp_path, capsys):
    code = eval_cmd.main(
        ["--real", str(tmp_path / "nope"), "--fake", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert code == 2 and "not found" in capsys.readouterr().err


def test_load_image_set_csv_label_filter_and_subfolders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = []
    for i in range(6):
        lab = "a" if i % 2 else "b"
        x = np.full((40, 30), i * 20, np.uint8)
        _save(tmp_path / lab / f"{i}.png", x / 255.0)
        rows.append({"filename": f"{lab}/{i}.png", "label": lab, "patient_id": f"p{i}"})
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    s = load_image_set(tmp_path / "meta.csv", size=16, label="a")
    assert len(s) == 3 and set(s.labels) == {"a"} and s.patient_ids == ["p1", "p3", "p5"]
    assert s.images.shape == (3, 16, 16)
    assert s.images[0].mean() == pytest.approx(20 / 255, abs=1e-3)  # 8-bit: divided by 255, not min-max
    f = load_image_set(tmp_path, size=16)  # folder without metadata.csv: sub-folder names are labels
    assert sorted(f.labels) == ["a"] * 3 + ["b"] * 3
    sub = load_image_set(tmp_path / "meta.csv", size=16, max_images=4, seed=1)
    assert len(sub) == 4 and sub.paths == sorted(
        sub.paths, key=lambda p: rows.index(next(r for r in rows if p.endswith(r["filename"])))
    )


def test_load_hf_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.fromarray(np.full((24, 32), v, np.uint8)) for v in (0, 100, 200)]
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 1]}).cast_column(
        "image", datasets.Image()
    )
    ds = ds.cast_column("label", datasets.ClassLabel(names=["normal", "pneumonia"]))
    ds.save_to_disk(str(tmp_path / "ds"))
    s = load_image_set(str(tmp_path / "ds"), size=16, label="pneumonia")
    assert len(s) == 2 and s.labels == ["pneumonia", "pneumonia"]
    assert s.images[0].mean() == pytest.approx(100 / 255, abs=1e-3)


def test_evaluate_api_paired_and_downstream(tmp_path):
    from medsd.metrics import EvalConfig, ImageSet, evaluate

    big = (phantoms.Finding(side="right", zone="middle", radius_frac=0.15, strength=0.5),)

    def make(off, n=24):
        x = np.stack(
            [phantoms.chest_phantom(32, seed=off + i, findings=big if i % 2 else ()) for i in range(n)]
        )
        return ImageSet(
            x,
            [f"{off}_{i}.png" for i in range(n)],
            ["op" if i % 2 else "no" for i in range(n)],
            [str(i) for i in range(n)],
        )

    real, fake = make(0), make(0)  # identical sets: paired metrics must be perfect
    rep, code = evaluate(
        EvalConfig(
            real=real,
            fake=fake,
            out=str(tmp_path),
            size=32,
            paired=True,
            downstream=True,
            downstream_epochs=2,
            diversity_pairs=10,
            kid_subsets=2,
            image_figures=False,
            progress=False,
        ),
        log=lambda s: None,
    )
    assert code == 0
    assert rep["paired"]["n_pairs"] == 24 and rep["paired"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert set(rep["downstream"]["results"]) == {"synthetic", "real", "both"}
    assert [r["class"] for r in rep["class_set_table"]] == ["no", "op"]
    assert rep["distribution"]["radiomics"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
