"""Bad and hostile input, one module: every case builds its input on the fly in ``tmp_path`` and
asserts exactly one outcome, a one-line error that names the input and what was expected, a listed skip,
or a correct load.

- Data side (``bad_input_data``): readers of every format, intensity defaults, folders, CSVs, streaming and
  evaluation's reading, through the library API.
- Model folders and every command (``bad_input_commands``): ``medsd.cli.main`` in-process, stderr one line.
"""

from __future__ import annotations

import bad_input_commands as commands
import bad_input_data as data
import pytest

from medsd.cli import build_parser, main
from medsd.data.intensity import WindowMapping


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in data.CASES])
def test_data_input(case: data.Case, tmp_path) -> None:
    data.run_case(case, tmp_path)


@pytest.mark.parametrize("case", commands.CASES, ids=[c.name for c in commands.CASES])
def test_model_folder_and_command_input(case: commands.Case, tmp_path, monkeypatch, capsys) -> None:
    commands.run_case(case, tmp_path, monkeypatch, capsys)


def test_cases_are_unique_cover_every_outcome_and_are_enough() -> None:
    names = [c.name for c in data.CASES] + [c.name for c in commands.CASES]
    assert len(names) == len(set(names))
    assert len(names) >= 80
    assert {c.expect for c in data.CASES} == {data.REFUSE, data.SKIP, data.LOAD}
    assert {c.expect for c in commands.CASES} == {"error", "ok"}


def test_every_command_has_a_bad_input_case() -> None:
    (sub,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    for command in sub.choices:
        prefix = command.replace("-", "_") + "_"
        assert any(c.name.startswith(prefix) and c.expect == "error" for c in commands.CLI_CASES), command


def test_debug_shows_the_traceback(tmp_path):
    model = commands.ddpm(tmp_path / "m", stock=True, pickle=True)
    from medsd.pipelines.folder import ModelFolderError

    with pytest.raises(ModelFolderError, match="allow_pickle"):
        main(["generate", str(model), "--out", str(tmp_path / "out"), *commands.GEN, "--debug"])


def test_library_loader_refuses_what_the_cli_refuses(tmp_path):
    """``MedPipeline.from_pretrained`` and the pipeline classes: allow_pickle, trust_remote_code, wrong class."""
    from medsd.errors import MedsdConfigError
    from medsd.pipelines.auto import MedPipeline
    from medsd.pipelines.cddpm import MedCDDPMPipeline
    from medsd.pipelines.ddpm import MedDDPMPipeline

    folder = commands.ddpm(tmp_path / "p", stock=True, pickle=True)
    with pytest.raises(MedsdConfigError, match="diffusion_pytorch_model.bin.*allow_pickle"):
        MedPipeline.from_pretrained(folder)
    with pytest.raises(MedsdConfigError, match="allow_pickle"):
        MedDDPMPipeline.from_pretrained(folder)
    pipe = MedPipeline.from_pretrained(folder, allow_pickle=True)
    assert isinstance(pipe, MedDDPMPipeline) and pipe.unet.config.sample_size == 8
    with pytest.raises(MedsdConfigError, match="trust_remote_code"):
        MedDDPMPipeline.from_pretrained(commands.ddpm(tmp_path / "l"), trust_remote_code=True)
    with pytest.raises(MedsdConfigError, match="MedDDPMPipeline folder; expected a MedCDDPMPipeline"):
        MedCDDPMPipeline.from_pretrained(tmp_path / "l")
    mapped = MedPipeline.from_pretrained(commands.ddpm(tmp_path / "w", mapping=WindowMapping(-1000.0, 400.0)))
    assert mapped.intensity_mapping == WindowMapping(-1000.0, 400.0)
