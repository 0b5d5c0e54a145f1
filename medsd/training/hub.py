"""The Hugging Face Hub: checks before training, the memorisation gate, and the upload (``medsd push``).

Tokens come from ``--hub_token``, ``HF_TOKEN`` or ``huggingface-cli login`` and are never printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError
from medsd.metrics.audit_gate import AuditVerdict, MemorisationGateError, check_audit_for_push
from medsd.run_folder import HUB_IGNORE

EVAL_REPORT_CANDIDATES = ("eval/report.json", "eval_report.json")


class HubError(MedsdError):
    """A Hub push that cannot work (repo id, token, network, memorisation gate)."""


def _hide(text: str, token: str | None) -> str:
    text = str(text).splitlines()[0] if str(text) else ""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def resolve_token(token: str | None = None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def check_hub_ready(repo_id: str | None, token: str | None = None, timeout: float = 10.0) -> str:
    """Fail fast, with one line, when a push after training could not work; returns the user name.

    Checks the repo id's form, that a token exists, that the Hub is not switched off (``HF_HUB_OFFLINE``) and
    that it answers ``whoami`` with that token.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise HubError("push_to_hub needs --hub_model_id NAME/REPO (e.g. your-name/medsd-cxr)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--hub_model_id {repo_id!r} is not a valid Hub repo id ({_hide(e, None)})") from None
    if "/" not in repo_id:
        raise HubError(
            f"--hub_model_id {repo_id!r}: expected NAME/REPO (your user or organisation, then the repo)"
        )
    tok = resolve_token(token)
    if not tok:
        raise HubError(
            "no Hugging Face token: pass --hub_token, set HF_TOKEN, or run `huggingface-cli login`"
        )
    if str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes", "on"):
        raise HubError(
            "the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); unset it to push, or drop --push_to_hub"
        )
    from huggingface_hub import HfApi

    try:
        who = HfApi(token=tok).whoami(token=tok)
    except Exception as e:  # noqa: BLE001 - network, auth: one line without the token
        raise HubError(
            f"cannot reach the Hugging Face Hub with this token: {type(e).__name__}: {_hide(e, tok)}"
        ) from None
    return str(who.get("name", "")) if isinstance(who, dict) else ""


def find_eval_report(folder: str | Path, report: str | Path | None = None) -> Path | None:
    if report is not None:
        p = Path(report)
        if not p.is_file():
            raise HubError(f"--eval_report {p} does not exist")
        return p
    for rel in EVAL_REPORT_CANDIDATES:
        if (Path(folder) / rel).is_file():
            return Path(folder) / rel
    return None


def memorisation_gate(
    report: dict[str, Any] | None, allow_memorised: bool = False, skip_audit: bool = False
) -> AuditVerdict:
    """Refuse (one line naming the flag) when the audit found copies, or is missing or invalid; the verdict
    otherwise (:func:`medsd.metrics.audit_gate.check_audit_for_push`)."""
    try:
        return check_audit_for_push(report, allow_memorised=allow_memorised, skip_audit=skip_audit)
    except MemorisationGateError as e:
        raise HubError(str(e)) from None


def refresh_card_for_hub(
    folder: Path, repo_id: str, report: dict[str, Any] | None, verdict: AuditVerdict | None = None
) -> Path:
    """Name the Hub id in the card's usage snippet and put the evaluation figures and the memorisation audit
    (with any override the push used) in it."""
    from .model_card import evaluation_section

    card = folder / "README.md"
    if not card.is_file():
        raise HubError(f"{folder} has no README.md model card; is it a finished medsd output folder?")
    text = card.read_text()
    text = text.replace(f'"{folder.name}"', f'"{repo_id}"').replace(f'"{folder}"', f'"{repo_id}"')
    if (report is not None or verdict is not None) and "## Evaluation" in text:
        head, rest = text.split("## Evaluation", 1)
        tail = rest[rest.find("\n## ") :] if "\n## " in rest else "\n"
        text = f"{head}## Evaluation\n\n{evaluation_section(report, verdict)}\n{tail}"
    card.write_text(text)
    return card


def push_folder(
    folder: str | Path,
    repo_id: str | None,
    token: str | None = None,
    private: bool = True,
    allow_memorised: bool = False,
    eval_report: str | Path | None = None,
    check: bool = True,
    skip_audit: bool = False,
) -> str:
    """Upload a finished output folder: memorisation gate, card refresh and checks, then create and upload.

    Checkpoints, logs and sample grids stay local. Returns the repo id.
    """
    from huggingface_hub import HfApi

    from .model_card import check_model_card, load_eval_report

    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder")
    report_path = find_eval_report(folder, eval_report)
    report = load_eval_report(report_path)
    verdict = memorisation_gate(report, allow_memorised, skip_audit)
    tok = resolve_token(token)
    if check:
        check_hub_ready(repo_id, tok)
    assert repo_id is not None
    card = refresh_card_for_hub(folder, repo_id, report, verdict)
    problems = check_model_card(card, model_id=repo_id)
    if problems:
        raise HubError(f"{card}: model card problems: {'; '.join(problems)}")
    print(f"medsd push: {verdict.message}")
    api = HfApi(token=tok)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=tok)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            ignore_patterns=HUB_IGNORE,
            commit_message="Upload medsd model",
            token=tok,
        )
    except Exception as e:  # noqa: BLE001 - one line, without the token
        raise HubError(f"upload to {repo_id} failed: {type(e).__name__}: {_hide(e, tok)}") from None
    print(
        f"medsd push: uploaded {folder} to https://huggingface.co/{repo_id} ({'private' if private else 'public'})"
    )
    return repo_id
