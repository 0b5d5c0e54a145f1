"""Reader-study kit: export, then score made-up answer sheets with a known kappa."""

import csv
import json

import numpy as np
import pytest

from medsd.metrics import cohen_kappa, export_reader_study, score_reader_study


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "answer"])
        w.writerows(rows)


def test_cohen_kappa_known_values():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = 0.5*0.6 + 0.5*0.4 = 0.5 -> kappa 0.4
    a = ["real"] * 25 + ["fake"] * 25
    b = ["real"] * 20 + ["fake"] * 5 + ["real"] * 10 + ["fake"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["x"] * 4, ["x"] * 4) == 1.0


def test_export_and_score_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.random((6, 16, 16)).astype(np.float32)
    fake = rng.random((8, 16, 16)).astype(np.float32)
    info = export_reader_study(real, fake, tmp_path / "study", n_each=5, seed=1)
    assert info["n_cases"] == 10
    assert len(list((tmp_path / "study" / "cases").glob("case_*.png"))) == 10
    with open(tmp_path / "study" / "key.csv") as f:
        key = list(csv.DictReader(f))
    with open(tmp_path / "study" / "answer_sheet.csv") as f:
        sheet = list(csv.DictReader(f))
    assert [r["case_id"] for r in sheet] == [r["case_id"] for r in key]
    assert all(r["answer"] == "" for r in sheet)
    assert sorted(r["truth"] for r in key).count("real") == 5

    perfect = [(r["case_id"], r["truth"]) for r in key]
    flipped = [(r["case_id"], "fake" if r["truth"] == "real" else "real") for r in key]
    unsure = [(r["case_id"], "unsure") for r in key[:2]] + perfect[2:]
    _write(tmp_path / "alice.csv", perfect)
    _write(tmp_path / "bob.csv", flipped)
    _write(tmp_path / "carol.csv", unsure)
    s = score_reader_study(
        tmp_path / "study" / "key.csv", [tmp_path / "alice.csv", tmp_path / "bob.csv", tmp_path / "carol.csv"]
    )
    assert s["readers"]["alice"]["accuracy"] == 1.0
    assert s["readers"]["bob"]["accuracy"] == 0.0
    assert s["readers"]["carol"]["accuracy"] == pytest.approx(0.8)
    assert s["readers"]["carol"]["n_unsure"] == 2 and s["readers"]["carol"]["accuracy_decided"] == 1.0
    k = {(x["reader_a"], x["reader_b"]): x["kappa"] for x in s["kappa"]}
    assert k[("alice", "bob")] == pytest.approx(-1.0)  # balanced 5/5, always opposite
    expected = cohen_kappa([t for _, t in perfect], [t for _, t in unsure])
    assert k[("alice", "carol")] == pytest.approx(expected)


def test_2afc_export(tmp_path):
    rng = np.random.default_rng(0)
    real, fake = rng.random((4, 16, 16)), rng.random((4, 16, 16))
    info = export_reader_study(real, fake, tmp_path / "s", design="2afc", seed=0)
    assert info["n_cases"] == 4
    assert len(list((tmp_path / "s" / "pairs").glob("*.png"))) == 8
    with open(tmp_path / "s" / "key.csv") as f:
        key = list(csv.DictReader(f))
    assert {r["truth"] for r in key} <= {"A", "B"}
    _write(tmp_path / "r1.csv", [(r["case_id"], r["truth"].lower()) for r in key])
    s = score_reader_study(tmp_path / "s" / "key.csv", {"r1": tmp_path / "r1.csv"})
    assert s["readers"]["r1"]["accuracy"] == 1.0
    with pytest.raises(ValueError):
        export_reader_study(real, fake, tmp_path / "x", design="nope")


def test_reader_study_cli_round_trip(tmp_path, capsys):
    from PIL import Image

    from medsd.commands import reader_study as cmd

    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 20), 40 * i + (0 if name == "real" else 10), np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    study = tmp_path / "study"
    assert (
        cmd.main(
            [
                "export",
                "--real",
                str(tmp_path / "real"),
                "--fake",
                str(tmp_path / "fake"),
                "--out",
                str(study),
                "--n",
                "3",
                "--size",
                "16",
            ]
        )
        == 0
    )
    with open(study / "key.csv") as f:
        key = list(csv.DictReader(f))
    _write(tmp_path / "r.csv", [(r["case_id"], r["truth"]) for r in key])
    assert (
        cmd.main(
            [
                "score",
                "--key",
                str(study / "key.csv"),
                "--answers",
                str(tmp_path / "r.csv"),
                "--out",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert "| r | 6 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["readers"]["r"]["accuracy"] == 1.0
    assert (tmp_path / "s.md").exists()


def test_fleiss_kappa_known_value():
    from medsd.metrics.reader_study import fleiss_kappa

    # two raters: Fleiss' kappa is Scott's pi; po = 3/4, pooled p = (3/8, 5/8) -> pe = 34/64 -> pi = 7/15
    a, b = ["real", "real", "fake", "fake"], ["real", "fake", "fake", "fake"]
    assert fleiss_kappa([list(x) for x in zip(a, b)]) == pytest.approx(7 / 15)
    assert fleiss_kappa([["x", "x", "x"]] * 3) == 1.0
    with pytest.raises(ValueError):
        fleiss_kappa([["a"], ["b"]])


def _write_sheet(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "stratum", "answer", "findings"])
        w.writerows(rows)


def test_all_synthetic_per_modality_counts_and_joint_agreement(tmp_path):
    from medsd.metrics.reader_study import render_scores_markdown

    rng = np.random.default_rng(0)
    fakes = {"xray": rng.random((5, 16, 16)), "ct": rng.random((4, 16, 16))}
    info = export_reader_study(None, fakes, tmp_path / "study", n_each=3, design="all_synthetic", seed=2)
    assert info["n_cases"] == 6 and info["n_real"] == 0
    assert info["strata"] == {"ct": {"real": 0, "fake": 3}, "xray": {"real": 0, "fake": 3}}
    with open(tmp_path / "study" / "key.csv") as f:
        key = list(csv.DictReader(f))
    with open(tmp_path / "study" / "answer_sheet.csv") as f:
        sheet = list(csv.DictReader(f))
    assert {r["truth"] for r in key} == {"fake"}
    assert list(sheet[0]) == ["case_id", "stratum", "answer", "findings"]
    assert [r["stratum"] for r in sheet] == [r["stratum"] for r in key]
    # alice: everything fake, one finding; bob: X-rays real, CT fake
    _write_sheet(
        tmp_path / "alice.csv",
        [(r["case_id"], r["stratum"], "fake", "rib artefact" if i == 0 else "") for i, r in enumerate(key)],
    )
    _write_sheet(
        tmp_path / "bob.csv",
        [(r["case_id"], r["stratum"], "real" if r["stratum"] == "xray" else "fake", "") for r in key],
    )
    s = score_reader_study(tmp_path / "study" / "key.csv", [tmp_path / "alice.csv", tmp_path / "bob.csv"])
    assert s["design"] == "all_synthetic"
    assert s["readers"]["alice"]["counts"] == {"fake": 6} and s["readers"]["alice"]["accuracy"] == 1.0
    assert s["readers"]["bob"]["counts"] == {"fake": 3, "real": 3}
    assert s["readers"]["bob"]["synthetic_rated_real"] == 3
    assert s["strata"]["xray"]["readers"]["bob"]["counts"] == {"real": 3}
    assert s["strata"]["ct"]["joint_agreement"]["unanimous"]["fake"] == 3
    ja = s["joint_agreement"]
    assert ja["all_agree"] == 3 and ja["no_consensus"] == 3
    assert ja["patterns"] == {"fake/fake": 3, "fake/real": 3}
    assert s["kappa"][0]["kappa"] == pytest.approx(0.0)  # alice constant: po = pe = 1/2
    assert s["fleiss_kappa"] == pytest.approx(-1 / 3)  # P = 1/2, pe = 0.75² + 0.25² = 0.625
    assert s["findings"] == [
        {
            "reader": "alice",
            "case_id": key[0]["case_id"],
            "stratum": key[0]["stratum"],
            "truth": "fake",
            "answer": "fake",
            "findings": "rib artefact",
        }
    ]
    md = render_scores_markdown(s)
    assert "## stratum xray" in md and "| bob | 3 | 3 | 0 | 0 | 0.00 |" in md and "rib artefact" in md
    _write_sheet(tmp_path / "bad.csv", [(key[0]["case_id"], "", "maybe", "")])
    with pytest.raises(ValueError, match="maybe"):
        score_reader_study(tmp_path / "study" / "key.csv", [tmp_path / "bad.csv"])


def test_mixed_design_needs_real_for_every_stratum(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="ct"):
        export_reader_study(
            {"xray": rng.random((3, 8, 8))},
            {"xray": rng.random((3, 8, 8)), "ct": rng.random((3, 8, 8))},
            tmp_path,
        )
    info = export_reader_study(rng.random((3, 8, 8)), rng.random((3, 8, 8)), tmp_path / "m", design="mixed")
    assert info["design"] == "mixed" and info["n_cases"] == 6
