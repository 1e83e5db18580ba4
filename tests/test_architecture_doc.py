"""docs/architecture.md points at lines of xlm/model.py and quotes them: every quote must be on its line."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[L(\d+)\]\(\.\./xlm/model\.py#L(\d+)\) `([^`]+)`")


def test_every_line_link_quotes_its_line():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    source = (ROOT / "xlm" / "model.py").read_text(encoding="utf-8").splitlines()
    links = LINK.findall(doc)
    assert len(links) >= 10
    stale = []
    for shown, target, quote in links:
        quote = quote.replace("\\|", "|")  # a `|` inside a table cell is escaped, code spans included
        line = int(target)
        if shown != target or quote not in source[line - 1]:
            found = [i + 1 for i, text in enumerate(source) if quote in text]
            stale.append(f"L{target} should quote {quote!r}, which is now at {found or 'no line'}")
    assert not stale, "docs/architecture.md is out of date:\n" + "\n".join(stale)
