"""The memorisation gate: what a ``medsd eval`` memorisation audit allows, and what a model or dataset card says
about it.

``audit_verdict(report)`` reads the audit of a report.json (or the audit dict itself) and says whether a push
may go ahead: it is refused when the audit found copies (unless ``allow_memorised``) or is missing or invalid
(unless ``skip_audit``). ``audit_card_section(report, verdict)`` is the markdown model and dataset cards carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medsd.errors import MedsdError


class MemorisationGateError(MedsdError):
    """A push refused by the memorisation gate (copies found, audit missing or invalid)."""


@dataclass
class AuditVerdict:
    """``status``: clean, copies, invalid or missing; ``allowed``: whether a push may go ahead; ``overrides``:
    the flags that let it (``--allow_memorised``, ``--skip_audit``); ``message``: one line."""

    status: str
    allowed: bool
    message: str
    overrides: tuple[str, ...] = ()
    n_copies: int = 0


def read_audit(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The memorisation audit of a ``medsd eval`` report (or ``report`` itself when it is an audit)."""
    if not isinstance(report, dict):
        return None
    if "self_test" in report or "n_copies" in report:
        return report
    mem = report.get("memorisation")
    return mem if isinstance(mem, dict) else None


def _problems(mem: dict[str, Any]) -> list[str]:
    if "self_test" not in mem or "calibration" not in mem:
        return ["made without calibration and self-test (rerun `medsd eval --train ...` with this medsd)"]
    return list(mem.get("problems") or ([] if mem.get("valid") else ["marked invalid"]))


def audit_verdict(
    report: dict[str, Any] | None, *, allow_memorised: bool = False, skip_audit: bool = False
) -> AuditVerdict:
    """What the audit of ``report`` allows (see the module docstring); never raises."""
    mem = read_audit(report)
    if mem is None:
        msg = "no memorisation audit (run `medsd eval --train ...` and pass its report.json)"
        ok = skip_audit
        return AuditVerdict("missing", ok, msg + ("; pushed with --skip_audit" if ok else ""),
                            ("--skip_audit",) if ok else ())  # fmt: skip
    n = int(mem.get("n_copies") or 0)
    total = (mem.get("settings") or {}).get("n_generated")
    problems = _problems(mem)
    overrides = []
    if problems and skip_audit:
        overrides.append("--skip_audit")
    if n and allow_memorised:
        overrides.append("--allow_memorised")
    allowed = (not problems or skip_audit) and (not n or allow_memorised)
    status = "copies" if n else ("invalid" if problems else "clean")
    parts = [f"{n} of {total} generated images are near-copies of training images"]
    pts = mem.get("n_train_patients_with_copy")
    if n and pts is not None:
        parts.append(f"of {pts} training patients")
    if problems:
        parts.append("audit invalid: " + "; ".join(problems))
    msg = "memorisation audit: " + ", ".join(parts)
    if overrides:
        msg += " (pushed with " + " ".join(overrides) + ")"
    return AuditVerdict(status, allowed, msg, tuple(overrides), n)


def check_audit_for_push(
    report: dict[str, Any] | None, *, allow_memorised: bool = False, skip_audit: bool = False
) -> AuditVerdict:
    """:func:`audit_verdict`, raising :class:`MemorisationGateError` (one line naming the flag) when refused."""
    v = audit_verdict(report, allow_memorised=allow_memorised, skip_audit=skip_audit)
    if v.allowed:
        return v
    if v.status == "copies" and not allow_memorised:
        fix = "retrain, or pass --allow_memorised to push anyway"
    else:
        fix = "run a valid audit (`medsd eval --train ...`), or pass --skip_audit to push without one"
    raise MemorisationGateError(f"refusing to push: {v.message}; {fix}")


def audit_card_section(report: dict[str, Any] | None, verdict: AuditVerdict | None = None) -> str:
    """Markdown for a model or dataset card: method, thresholds, false-alarm rate, self-test recall, counts
    (no patient ids), and any override the push used."""
    verdict = verdict or audit_verdict(report)
    mem = read_audit(report)
    lines = []
    if verdict.overrides:
        lines += [f"**Pushed with {' and '.join(verdict.overrides)}: {verdict.message}.**", ""]
    if mem is None:
        return "\n".join(lines + ["No memorisation audit was run for these images."])
    s, cal, st = mem.get("settings") or {}, mem.get("calibration") or {}, mem.get("self_test") or {}
    rows = [
        ("method", s.get("method", "NCC")),
        ("status", "valid" if not _problems(mem) else "INVALID: " + "; ".join(_problems(mem))),
        ("generated images that copy a training image", f"{mem.get('n_copies')} of {s.get('n_generated')}"),
    ]
    if mem.get("n_train_patients") is not None:
        rows.append(("training patients with a copy",
                     f"{mem.get('n_train_patients_with_copy')} of {mem.get('n_train_patients')}"))  # fmt: skip
    for name, thr in (cal.get("thresholds") or {}).items():
        rows.append((f"threshold, {name} distance", f"{thr:.4g} (held-out {cal.get('quantile')} quantile)"))
    if cal.get("false_alarm_rate") is not None:
        loo = cal.get("false_alarm_rate_leave_one_out")
        rows.append(("false-alarm rate on held-out real images",
                     f"{cal['false_alarm_rate']:.3f}" + (f" (leave-one-out {loo:.3f})" if loo is not None else "")
                     + f", n={cal.get('n_heldout')}"))  # fmt: skip
    kinds = st.get("kinds") or {}
    if kinds:
        recall = ", ".join(f"{k} {v['recall']:.2f}" for k, v in kinds.items())
        rows.append((f"self-test recall ({st.get('per_kind')} planted per kind, target {st.get('min_recall')})",
                     recall))  # fmt: skip
    table = ["| audit | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines + table)
