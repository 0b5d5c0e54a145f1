"""Config fields that carry their own meaning (medsd.flags), the run folder's one owner (medsd.run_folder),
and a trainer built once from a config (one range check, one lock)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import yaml
from test_training_core import RegressionTask, _config

from medsd.errors import MedsdConfigError
from medsd.flags import (
    Alias,
    add_dataclass_arguments,
    check_field_values,
    config_from_args,
    config_from_dict,
    field_meta,
    flag,
    resume_may_change,
    secret_fields,
)
from medsd.run_folder import HUB_IGNORE, RunFolder


@dataclasses.dataclass
class _Base:
    rate: float = flag(0.1, positive=True, help="a rate", resume="free")
    steps: int = flag(5, min=1, max=9)
    mode: str = flag("a", choices=lambda: ("a", "b"), aliases=(Alias("old_mode", removed_in="9.0"),))
    token: str | None = flag(None, secret=True)
    on: bool = flag(True, aliases=(Alias("off", convert=lambda v: v not in (True, "true")),))


@dataclasses.dataclass
class _Child(_Base):
    rate: float = 0.5  # a plain redeclaration keeps the base's metadata


def _parse(cls, argv):
    from medsd.errors import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="t")
    add_dataclass_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def test_a_subclass_default_keeps_the_base_field_meaning():
    meta = field_meta(_Child, "rate")
    assert meta["help"] == "a rate" and meta["positive"] and meta["resume"] == "free"
    assert _Child().rate == 0.5
    with pytest.raises(MedsdConfigError, match=r"--rate: expected a number > 0, got 0"):
        check_field_values(_Child(rate=0))


def test_ranges_and_choices_come_from_the_field():
    check_field_values(_Base())
    for bad, msg in [
        (dict(steps=0), r"--steps: expected a number >= 1"),
        (dict(steps=10), r"--steps: expected a number <= 9"),
        (dict(mode="c"), r"--mode: expected one of a / b, got 'c'"),
    ]:
        with pytest.raises(MedsdConfigError, match=msg):
            check_field_values(_Base(**bad))


def test_an_alias_is_an_option_string_and_a_yaml_key_not_a_field(tmp_path):
    assert {f.name for f in dataclasses.fields(_Base)} == {"rate", "steps", "mode", "token", "on"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _parse(_Base, ["--old_mode", "b", "--off"]) == _Base(mode="b", on=False)
        _parse(_Base, ["--old_mode", "b"])
    deprecations = [w for w in caught if "old_mode" in str(w.message)]
    assert len(deprecations) == 1 and "9.0" in str(deprecations[0].message)  # said once
    (tmp_path / "c.yaml").write_text("old_mode: b\nsteps: 3\n")
    assert _parse(_Base, ["--config", str(tmp_path / "c.yaml"), "--steps", "4"]) == _Base(mode="b", steps=4)
    assert _parse(_Base, ["--config", str(tmp_path / "c.yaml"), "--mode", "a"]).mode == "a"  # flags win


def test_secrets_and_resume_policy_are_read_from_the_field():
    assert secret_fields(_Child) == {"token"}
    assert resume_may_change(_Child, "rate") and not resume_may_change(_Child, "steps")
    assert not resume_may_change(_Child, "no_such_field")


def test_flag_values_stay_strings_until_the_config_is_built():
    with pytest.raises(MedsdConfigError, match=r"--steps: expected an integer, got 'many'"):
        _parse(_Base, ["--steps", "many"])
    with pytest.raises(MedsdConfigError, match=r"c.yaml: unknown field 'stepz' \(did you mean 'steps'\?\)"):
        config_from_dict(_Base, {"stepz": 1}, source="c.yaml")


def test_training_config_yaml_holds_fields_only_and_no_secret(tmp_path):
    from medsd.training.config import parse_config, save_config
    from medsd.training.ddpm import DDPMTrainConfig

    cfg = parse_config(DDPMTrainConfig, ["--data_split", "all", "--hub_token", "hf_secret", "--center_crop"])
    save_config(cfg, tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert saved["split"] == "all" and saved["crop"] == "center"
    assert "hub_token" not in saved and "data_split" not in saved and "center_crop" not in saved


def test_resume_refuses_a_field_only_by_its_own_policy(tmp_path):
    from medsd.training.run_guard import check_resume_config, config_record

    cfg = _config(tmp_path)
    saved = config_record(cfg)
    changed = dataclasses.replace(cfg, logging_steps=3, report_to="tensorboard", learning_rate=0.5)
    with pytest.raises(MedsdConfigError, match=r"learning_rate: 0.01 -> 0.5") as e:
        check_resume_config(saved, changed, 4, tmp_path / "checkpoint-4")
    assert "logging_steps" not in str(e.value) and "report_to" not in str(e.value)
    allowed = dataclasses.replace(changed, allow_config_change=["learning_rate"])
    assert check_resume_config(saved, allowed, 4, tmp_path) == ["learning_rate: 0.01 -> 0.5"]


def test_eval_flags_are_the_eval_config_fields():
    from medsd.commands import eval as eval_cmd
    from medsd.errors import OneLineArgumentParser
    from medsd.metrics.evaluate import EvalConfig

    parser = OneLineArgumentParser(prog="medsd eval")
    eval_cmd.add_arguments(parser)
    common = ["--real", "r", "--fake", "f", "--out", "o"]
    cfg = eval_cmd.config_from_args(
        parser.parse_args([*common, "--no_c2st", "--quiet", "--lpips_weights", "w"])
    )
    assert cfg == EvalConfig("r", "f", "o", c2st=False, progress=False, lpips=True, lpips_weights="w")
    cfg = eval_cmd.config_from_args(parser.parse_args([*common, "--features", "radiomics", "inception"]))
    assert cfg.features == ["radiomics", "inception"] and cfg.size == EvalConfig.size
    assert cfg.window is None and eval_cmd.config_from_args(
        parser.parse_args([*common, "--window=-1,4"])
    ).window == (
        -1.0,
        4.0,
    )
    for argv, msg in [
        (["--k", "0"], r"--k: expected a number >= 1"),
        (["--real_split", "x"], "--real_split"),
    ]:
        with pytest.raises(MedsdConfigError, match=msg):
            eval_cmd.config_from_args(parser.parse_args([*common, *argv]))


def test_the_run_folder_names_its_parts(tmp_path):
    run = RunFolder(tmp_path)
    for step in (10, 2):
        run.checkpoint(step).mkdir()
    (tmp_path / "checkpoint-x").mkdir()  # not a step
    run.checkpoint_in_progress(3).mkdir()
    assert run.checkpoints() == [run.checkpoint(2), run.checkpoint(10)]
    assert run.leftovers() == [run.checkpoint_in_progress(3)]
    assert run.user_files() == ["checkpoint-10", "checkpoint-2", "checkpoint-x"]
    assert run.lock.name.startswith(".tmp-") and any(p.startswith(".tmp-") for p in HUB_IGNORE)
    assert run.sample_grid(7).parent.name in {p.split("/")[0] for p in HUB_IGNORE}


def test_trainer_from_config_checks_and_locks_once(tmp_path, monkeypatch):
    from medsd.training import config as config_module
    from medsd.training import run_guard
    from medsd.training.core import Trainer

    calls = {"check": 0, "acquire": 0}
    check, acquire = config_module.check_ranges, run_guard.OutputDirLock.acquire

    def counted_check(cfg):
        calls["check"] += 1
        check(cfg)

    def counted_acquire(self):
        calls["acquire"] += 1
        return acquire(self)

    monkeypatch.setattr(config_module, "check_ranges", counted_check)
    monkeypatch.setattr(run_guard.OutputDirLock, "acquire", counted_acquire)
    result = Trainer.from_config(lambda cfg: RegressionTask(), _config(tmp_path, max_train_steps=2)).run()
    assert result.global_step == 2 and calls == {"check": 1, "acquire": 1}
    assert not RunFolder(result.output_dir).lock.exists()  # released at the end
    with pytest.raises(MedsdConfigError, match="--max_train_steps"):
        Trainer.from_config(lambda cfg: RegressionTask(), _config(tmp_path / "b", max_train_steps=0))
    assert not (tmp_path / "b").exists()
