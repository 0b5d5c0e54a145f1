"""Pre-emption: SIGTERM and Ctrl-C (SIGINT) end training with a checkpoint at the current step."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from medsd.errors import MedsdError


class TrainingInterrupted(MedsdError):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """While active, SIGTERM / SIGINT only set a flag; the loop asks :meth:`requested` after each step.

    With several processes the flag is reduced over all of them (at logging steps, to keep the loop free of
    a collective per step), so every process stops, and checkpoints, at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def requested(self, accelerator: Any, at_log_step: bool) -> int | None:
        """The signal number when training should stop now, else None."""
        if accelerator.num_processes == 1:
            return self.received
        if not at_log_step:
            return None
        import torch

        local = torch.tensor(self.received or 0, device=accelerator.device)
        return int(accelerator.reduce(local, reduction="max").item()) or None
