"""The examples in docs/tokenizer.md run and print what the page says (doctest)."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "tokenizer.md"


def test_tokenizer_doc_examples(
    enfr_vocab_dir, enfr_tokenizer_dir, transformers_module, tmp_path, monkeypatch
):
    # The page's examples name files in the current directory, as a user would have them.
    (tmp_path / "xlm-clm-enfr-1024").symlink_to(enfr_tokenizer_dir)
    for name in ("codes_enfr", "vocab_enfr"):
        (tmp_path / name).symlink_to(enfr_vocab_dir / name)
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted >= 25 and result.failed == 0, f"{result.failed} example(s) of {DOC.name} failed"
