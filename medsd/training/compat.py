"""Checks and adapters for the upstream libraries whose versions medsd depends on.

Everything here that touches a private upstream API does so in one place, checks that it exists, and
fails with a one-line :class:`~medsd.errors.MedsdError` naming the versions when it does not.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from packaging.version import Version

from medsd.errors import MedsdError

TESTED_SET_HINT = 'install the tested set: python3 -m pip install -e ".[dev]" -c constraints.txt'


class IncompatibleVersionsError(MedsdError):
    """Two installed libraries that cannot work together for what was asked."""


def _version(package: str) -> Version:
    return Version(metadata.version(package))


def required_peft_version() -> Version | None:
    """The lowest peft the installed transformers accepts for PEFT adapters (None when it sets none)."""
    try:  # a module constant of transformers' peft integration (read only, never patched)
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:
        return None
    return Version(MIN_PEFT_VERSION)


def check_text_encoder_lora_support() -> None:
    """Refuse at start-up, in one line, a transformers/peft pair that cannot add a text-encoder LoRA.

    transformers 5.24 asks for peft>=0.22 before it loads a LoRA into a ``CLIPTextModel``; without this
    check the failure comes as a traceback after the base model has been loaded.
    """
    needed = required_peft_version()
    installed = _version("peft")
    if needed is not None and installed < needed:
        raise IncompatibleVersionsError(
            f"--train_text_encoder: transformers {metadata.version('transformers')} needs peft>={needed}, "
            f"but peft {installed} is installed; {TESTED_SET_HINT} "
            f"(or pip install 'peft>={needed}' once it exists)"
        )


def parse_launch_config(config_file: str, script: str = "train.py") -> tuple[Any, Any, Any]:
    """``accelerate launch --config_file CONFIG SCRIPT`` parsed and validated as accelerate does it.

    Returns accelerate's ``(args, config, mp_from_config_flag)``. accelerate exposes the parser but not the
    validation step (private ``_validate_launch_command``), which this adapter checks for.
    """
    from accelerate.commands import launch

    if not hasattr(launch, "_validate_launch_command"):
        raise IncompatibleVersionsError(
            f"accelerate {metadata.version('accelerate')} has no _validate_launch_command; {TESTED_SET_HINT}"
        )
    args = launch.launch_command_parser().parse_args(["--config_file", str(config_file), script])
    return launch._validate_launch_command(args)
