"""Every W-code the repository cites (W7: LiteLLM's cached admin marker…) is explained in docs/.

The codes come from a survey of LiteLLM that is not in the repository, so a code with no
entry in docs/litellm-weaknesses.md would be a reference nobody can follow.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = ROOT / "docs" / "litellm-weaknesses.md"
CODE = re.compile(r"\bW[0-9]+\b")
SKIP = (LIST, Path(__file__).resolve())  # the list itself, and the codes this file names
SOURCES = ("operator", "tests", "docs", "bench", "charts", "e2e", "examples", "README.md")


def cited() -> dict[str, str]:
    """Each cited code, with the first file that cites it."""
    found: dict[str, str] = {}
    for top in SOURCES:
        base = ROOT / top
        for path in sorted([base] if base.is_file() else base.rglob("*")):
            if path in SKIP or not path.is_file() or path.suffix not in {".py", ".md", ".yaml"}:
                continue
            for code in CODE.findall(path.read_text(errors="replace")):
                found.setdefault(code, str(path.relative_to(ROOT)))
    return found


def test_every_cited_code_has_an_entry() -> None:
    anchors = set(re.findall(r'<a id="(w[0-9]+)"></a>', LIST.read_text()))
    missing = {code: where for code, where in cited().items() if code.lower() not in anchors}
    assert not missing, f"explain these in {LIST.relative_to(ROOT)}: {missing}"


def test_the_check_sees_the_known_citations() -> None:
    # If the scan found nothing, the test above would prove nothing.
    assert {"W2", "W7", "W13"} <= cited().keys()
