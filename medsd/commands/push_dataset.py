"""``medsd push DATASET_DIR --repo_id NAME/REPO --repo_type dataset``: upload a ``medsd generate`` dataset.

The same memorisation gate as for models (:func:`medsd.training.hub.memorisation_gate`), a dataset card that
passes :func:`medsd.commands.dataset_card.check_dataset_card`, a private repo by default, and
a resumable upload in chunks (:func:`upload_dataset`). The run state and any ``eval/`` folder
stay local; the token is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsd.training.hub import (
    HubError,
    _hide,
    check_hub_ready,
    find_eval_report,
    memorisation_gate,
    resolve_token,
)

from .dataset_card import CARD_FILE, check_dataset_card, write_dataset_card
from .generate_store import MANIFEST_FILE, METADATA_FILE, STATE_DIR

IGNORE_PATTERNS = [f"{STATE_DIR}/**", "eval/**", ".tmp-*"]


def _card_license(card: Path) -> str:
    from huggingface_hub import DatasetCard

    return (
        str(DatasetCard(card.read_text()).data.to_dict().get("license") or "other")
        if card.is_file()
        else "other"
    )


def upload_dataset(api: Any, repo_id: str, folder: Path, private: bool) -> None:
    """``HfApi.upload_large_folder`` where huggingface_hub has it (0.25 - 1.x); from 2.x on, ``upload_folder``
    itself uploads in several commits and resumes an interrupted upload, and ``upload_large_folder`` is gone."""
    common = dict(
        repo_id=repo_id, folder_path=str(folder), repo_type="dataset", ignore_patterns=IGNORE_PATTERNS
    )
    if hasattr(api, "upload_large_folder"):
        api.upload_large_folder(private=private, **common)
    else:
        api.upload_folder(commit_message="Upload medsd synthetic dataset", **common)


def push_dataset_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    allow_memorised: bool = False,
    eval_report: str | Path | None = None,
    check: bool = True,
    skip_audit: bool = False,
) -> str:
    """Gate, refresh the card with the evaluation figures, check it, then create the repo and upload."""
    from huggingface_hub import HfApi

    from medsd.training.model_card import load_eval_report

    folder = Path(folder)
    missing = [name for name in (MANIFEST_FILE, METADATA_FILE) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise HubError(
            f"{folder}: not a finished `medsd generate` dataset (no {', '.join(missing) or 'folder'}); "
            "finish it by running its generate command again"
        )
    report = load_eval_report(find_eval_report(folder, eval_report))
    verdict = memorisation_gate(report, allow_memorised, skip_audit)
    tok = resolve_token(token)
    if check:
        check_hub_ready(repo_id, tok)
    card = folder / CARD_FILE
    prov = json.loads((folder / MANIFEST_FILE).read_text())
    write_dataset_card(folder, prov, _card_license(card) if card.is_file() else "other", report, verdict)
    problems = check_dataset_card(card)
    if problems:
        raise HubError(f"{card}: dataset card problems: {'; '.join(problems)}")
    print(f"medsd push: {verdict}")
    api = HfApi(token=tok)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=tok)
        upload_dataset(api, repo_id, folder, private)
    except Exception as e:  # noqa: BLE001 - one line, without the token
        raise HubError(f"upload to {repo_id} failed: {type(e).__name__}: {_hide(e, tok)}") from None
    visibility = "private" if private else "public"
    print(f"medsd push: uploaded {folder} to https://huggingface.co/datasets/{repo_id} ({visibility})")
    return repo_id
