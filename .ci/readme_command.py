"""Print the shell command of one README section (the first ```bash block under "## <section>").

.ci/run and .ci/newest use it so that CI runs exactly what the README tells a user to run.
Standard library only: it runs before anything is installed.
"""

import re
import sys
from pathlib import Path


def section_command(readme: str, section: str) -> str:
    match = re.search(rf"^## {re.escape(section)}\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if not match:
        raise SystemExit(f"README.md has no '## {section}' section")
    block = re.search(r"```bash\n(.*?)```", match.group(1), re.S)
    if not block:
        raise SystemExit(f"README.md section '## {section}' has no ```bash block")
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise SystemExit(f"README.md section '## {section}' must hold one command, found {len(lines)}")
    return lines[0].strip()


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print(section_command((root / "README.md").read_text(), sys.argv[1]))
