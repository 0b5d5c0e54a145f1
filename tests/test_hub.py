"""Hub: checks before training, the model card, the memorisation gate and the upload (no network)."""

from __future__ import annotations

import json

import pytest

from medsd.cli import main
from medsd.training import hub
from medsd.training.model_card import check_model_card, write_model_card

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz123456"


def _card(folder, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text("{}")
    return write_model_card(
        folder,
        title="medsd unconditional DDPM",
        summary="A test model.",
        usage=f'from medsd import MedDDPMPipeline\npipe = MedDDPMPipeline.from_pretrained("{folder.name}")',
        training={"train_data": "phantom", "max_train_steps": 3},
        **kw,
    )


def test_card_front_matter_and_sections(tmp_path):
    path = _card(tmp_path / "run")
    assert check_model_card(path) == []
    text = path.read_text()
    meta = text.split("---")[1]
    assert "license: other" in meta and "license_name:" in meta and "license_link: LICENSE.md" in meta
    assert "library_name: diffusers" in meta and "pipeline_tag: unconditional-image-generation" in meta
    assert "synthetic images are not for diagnosis" in text and "no patient" in text
    assert (tmp_path / "run" / "LICENSE.md").is_file()
    # the checks catch what they should
    broken = tmp_path / "broken.md"
    broken.write_text(text.replace("license_name:", "x_name:").replace("## Limitations", "## Other"))
    problems = check_model_card(broken, model_id="me/model")
    assert any("license_name" in p for p in problems) and any("Limitations" in p for p in problems)
    assert any("me/model" in p for p in problems)


def test_lora_card_needs_base_model(tmp_path):
    path = _card(tmp_path / "lora", tags=["lora"], base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
                 pipeline_tag="text-to-image")  # fmt: skip
    assert check_model_card(path) == []
    path = _card(tmp_path / "lora2", tags=["lora"], pipeline_tag="text-to-image")
    assert any("base_model" in p for p in check_model_card(path))


@pytest.mark.parametrize(
    "repo_id, token, expect",
    [(None, TOKEN, "hub_model_id"), ("bad id!", TOKEN, "not a valid"), ("me/model", None, "no Hugging Face token"),
     ("me/model", TOKEN, "HF_HUB_OFFLINE")],
)  # fmt: skip
def test_hub_checks_fail_fast_with_one_line(monkeypatch, repo_id, token, expect):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(hub.HubError) as e:
        hub.check_hub_ready(repo_id, token)
    assert expect in str(e.value) and "\n" not in str(e.value) and TOKEN not in str(e.value)


def test_unreachable_hub_is_one_line_without_the_token(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def whoami(self, token=None):
        raise ConnectionError(f"Max retries exceeded with token {TOKEN}\nmore lines")

    monkeypatch.setattr("huggingface_hub.HfApi.whoami", whoami)
    with pytest.raises(hub.HubError) as e:
        hub.check_hub_ready("me/model", TOKEN)
    assert "cannot reach" in str(e.value) and TOKEN not in str(e.value) and "\n" not in str(e.value)


def test_training_checks_the_hub_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "never"
    rc = main(["train", "ddpm", "--push_to_hub", "--hub_model_id", "me/model", "--hub_token", TOKEN,
               "--output_dir", str(out), "--max_train_steps", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and TOKEN not in err[0]
    assert not out.exists()


def _audit(n_copies=0, valid=True, patients=0):
    """A memorisation audit as `medsd eval --train` writes it (the fields the gate and the card read)."""
    return {
        "version": 2,
        "valid": valid,
        "problems": [] if valid else ["self-test recall below 0.9 for: shift"],
        "n_copies": n_copies,
        "n_train_patients": 40,
        "n_train_patients_with_copy": patients,
        "settings": {"method": "registered NCC and DCT perceptual hash", "n_generated": 8},
        "calibration": {"quantile": 0.005, "thresholds": {"registered_ncc": 0.05}, "n_heldout": 239,
                        "false_alarm_rate": 0.004, "false_alarm_rate_leave_one_out": 0.013},
        "self_test": {"per_kind": 20, "min_recall": 0.9, "passed": valid,
                      "kinds": {"hflip": {"recall": 1.0}, "shift": {"recall": 1.0 if valid else 0.5}}},
    }  # fmt: skip


@pytest.fixture
def fake_hub(monkeypatch):
    calls = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.HfApi.whoami", lambda self, token=None: {"name": "me"})
    monkeypatch.setattr(
        "huggingface_hub.HfApi.create_repo", lambda self, repo_id, **kw: calls.update(create=(repo_id, kw))
    )
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda self, **kw: calls.update(upload=kw))
    return calls


def test_push_uploads_private_with_hub_id_in_the_card(tmp_path, fake_hub, capsys):
    folder = tmp_path / "run"
    _card(folder)
    (folder / "eval").mkdir()
    report = {"memorisation": _audit(), "distribution": {"radiomics": {"frechet_distance": 12.5, "kid": 0.1}}}
    (folder / "eval" / "report.json").write_text(json.dumps(report))
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN]) == 0
    assert fake_hub["create"] == ("me/model", {"private": True, "exist_ok": True, "token": TOKEN})
    assert (
        fake_hub["upload"]["folder_path"] == str(folder)
        and "checkpoint-*" in fake_hub["upload"]["ignore_patterns"]
    )
    card = (folder / "README.md").read_text()
    assert 'from_pretrained("me/model")' in card and "12.5" in card and "0 of 8" in card
    assert "### Memorisation audit" in card and "shift 1.00" in card and "Pushed with" not in card
    assert check_model_card(folder / "README.md", model_id="me/model") == []
    assert TOKEN not in capsys.readouterr().out


def test_push_refuses_memorised_models_unless_allowed(tmp_path, fake_hub, capsys):
    folder = tmp_path / "run"
    _card(folder)
    (folder / "eval_report.json").write_text(json.dumps({"memorisation": _audit(n_copies=3, patients=2)}))
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "3 of 8 generated images are near-copies" in err and "of 2 training patients" in err
    assert "--allow_memorised" in err and "upload" not in fake_hub
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN, "--skip_audit"]) == 2
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN, "--allow_memorised"]) == 0
    assert "upload" in fake_hub
    assert "Pushed with --allow_memorised" in (folder / "README.md").read_text()


@pytest.mark.parametrize(
    "report, why",
    [(None, "no memorisation audit"), ({"memorisation": _audit(valid=False)}, "audit invalid"),
     ({"memorisation": {"n_copies": 0, "settings": {"threshold": 0.97, "n_generated": 8}}}, "without calibration")],
)  # fmt: skip
def test_push_refuses_a_missing_or_invalid_audit_unless_skipped(tmp_path, fake_hub, capsys, report, why):
    folder = tmp_path / "run"
    _card(folder)
    if report is not None:
        (folder / "eval_report.json").write_text(json.dumps(report))
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and "--skip_audit" in err[0] and "upload" not in fake_hub
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN, "--allow_memorised"]) == 2
    assert main(["push", str(folder), "--repo_id", "me/model", "--token", TOKEN, "--skip_audit"]) == 0
    card = (folder / "README.md").read_text()
    assert "upload" in fake_hub and "Pushed with --skip_audit" in card and why in card
