"""Docs that cannot rot: every code block in README.md and docs/*.md marked runnable is run.

A block is marked by the line just above its opening fence::

    <!-- runnable -->
    <!-- runnable: OLD => NEW; OLD2 => NEW2 -->

The substitutions shrink a documented command to test size (tiny models, phantoms, few steps); each
OLD must occur in the block, so a substitution cannot go stale silently. In NEW, ``{tiny_sd}`` is a
tiny random Stable Diffusion folder built for the test. The blocks of one file run in order, in one
fresh folder with ``recipes/``, ``accelerate_configs/`` and ``benchmarks/`` linked in and
``../shared`` beside it, so a later block can use what an earlier one wrote. ``bash`` blocks run
with ``bash -euo pipefail``, ``python`` blocks with this interpreter after the file's earlier python
blocks (they share names, like notebook cells); a block that reads
``../shared`` is skipped when the shared data is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MARK = re.compile(r"^<!--\s*runnable(?::(?P<subs>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
LINKED = ("recipes", "accelerate_configs", "benchmarks")


@dataclass
class Snippet:
    doc: str
    line: int
    lang: str
    code: str


def parse_substitutions(text: str | None) -> list[tuple[str, str]]:
    subs = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        if "=>" not in part:
            raise ValueError(f"runnable substitution {part.strip()!r} has no '=>'")
        old, new = (s.strip() for s in part.split("=>", 1))
        subs.append((old, new))
    return subs


def runnable_snippets(path: Path, root: Path = ROOT) -> list[Snippet]:
    """The marked blocks of one Markdown file (named relative to ``root``), substitutions applied."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        mark = MARK.match(line.strip())
        if not mark:
            continue
        where = f"{path.relative_to(root)}:{i + 1}"
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence or fence.group("lang") not in ("bash", "python"):
            raise ValueError(
                f"{where}: a runnable marker must stand right above a ```bash or ```python block"
            )
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{where}: the code block is never closed")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        for old, new in parse_substitutions(mark.group("subs")):
            if old not in code:
                raise ValueError(f"{where}: substitution {old!r} does not occur in the block (stale?)")
            code = code.replace(old, new)
        out.append(Snippet(str(path.relative_to(root)), i + 1, fence.group("lang"), code))
    return out


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = [p for p in DOCS if any(MARK.match(ln.strip()) for ln in p.read_text().splitlines())]


def test_marker_parsing_catches_stale_substitutions(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- runnable: --steps 100 => --steps 2 -->\n```bash\necho --steps 100\n```\n")
    (snippet,) = runnable_snippets(doc, tmp_path)
    assert snippet.code == "echo --steps 2\n"
    doc.write_text("<!-- runnable: --epochs 9 => --epochs 1 -->\n```bash\necho --steps 100\n```\n")
    with pytest.raises(ValueError, match="does not occur"):
        runnable_snippets(doc, tmp_path)
    doc.write_text("<!-- runnable -->\ntext\n```bash\necho hi\n```\n")
    with pytest.raises(ValueError, match="right above"):
        runnable_snippets(doc, tmp_path)


def test_readme_main_commands_are_runnable():
    """The README's quickstart and loading snippets are among the blocks that run."""
    codes = [s.code for s in runnable_snippets(ROOT / "README.md")]
    assert any("medsd quickstart" in c for c in codes)
    assert any("MedPipeline.from_pretrained" in c for c in codes)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    from medsd.pipelines.random_sd import save_random_sd_pipeline

    return save_random_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "base")


@pytest.mark.slow
@pytest.mark.parametrize("doc", MARKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_snippets(doc: Path, tmp_path, request):
    snippets = runnable_snippets(doc)
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    earlier_python = ""  # python blocks of one file share their names, as cells of a notebook do
    for snippet in snippets:
        code = snippet.code
        if snippet.lang == "python":
            code, earlier_python = earlier_python + code, earlier_python + code
        if "{tiny_sd}" in code:
            code = code.replace("{tiny_sd}", str(request.getfixturevalue("tiny_sd")))
        if "../shared" in code and not SHARED.is_dir():
            continue
        cmd = (
            ["bash", "-euo", "pipefail", "-c", code]
            if snippet.lang == "bash"
            else [sys.executable, "-c", code]
        )
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"{snippet.doc}:{snippet.line} ({snippet.lang}) failed with exit {proc.returncode}\n"
            f"--- code ---\n{code}--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-3000:]}"
        )
