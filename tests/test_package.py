"""Package-level promises: light import, every export resolves, every command explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

import medsd
from medsd.cli import build_parser, main


def test_import_medsd_does_not_import_heavy_packages():
    code = (
        "import sys, medsd, medsd.cli; medsd.cli.build_parser();"
        "heavy = [m for m in ('torch', 'diffusers', 'open_clip', 'torchvision', 'pydicom', 'nibabel') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing medsd pulled in: {out}"


@pytest.mark.parametrize("name", sorted(medsd._EXPORTS))
def test_every_export_resolves(name):
    obj = getattr(medsd, name)
    assert obj.__name__ == name


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute"):
        medsd.DoesNotExist  # noqa: B018


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_the_expected_commands_exist():
    assert {"quickstart", "train", "sample", "eval", "ablation", "xray-table"} <= set(_subcommands())


def test_train_family_help_lists_config_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "ddpm", "--help"])
    out = capsys.readouterr().out
    for flag in ("--resume_from_checkpoint", "--time_embedding", "--config", "--overwrite_output_dir"):
        assert flag in out


def test_bad_config_value_is_one_clear_line(capsys):
    code = main(["train", "ddpm", "--max_train_steps", "lots"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_train_steps" in err[0]


LAYERS = {
    "data": 0,
    "models": 0,
    "utils": 0,
    "errors": 0,
    "pipelines": 1,
    "metrics": 1,
    "training": 2,
    "commands": 3,
    "cli": 3,
}


def test_imports_flow_one_way():
    """data/models at the bottom, pipelines/metrics above, training above those, commands/CLI on top."""
    import ast
    from pathlib import Path

    root = Path(medsd.__file__).parent
    violations = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        layer = LAYERS.get(rel.parts[0].removesuffix(".py"))
        if layer is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the package
                    base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                    names = [".".join(base + ([node.module] if node.module else []))]
                elif node.module and node.module.startswith("medsd."):
                    names = [node.module.removeprefix("medsd.")]
            elif isinstance(node, ast.Import):
                names = [a.name.removeprefix("medsd.") for a in node.names if a.name.startswith("medsd.")]
            for name in names:
                target = LAYERS.get(name.split(".")[0]) if name else None
                if target is not None and target > layer:
                    violations.append(f"{rel} imports medsd.{name}")
    assert not violations, violations
