"""The package surface: what `import xlm` offers, and what it does not load."""

from __future__ import annotations

import subprocess
import sys

import xlm


def test_every_exported_name_resolves():
    assert all(getattr(xlm, name) is not None for name in xlm.__all__)
    assert xlm.load_pretrained.__module__ == "xlm.checkpoint" and xlm.Tokenizer.__module__ == "xlm.tokenizer"


def test_import_xlm_loads_neither_moses_nor_the_hub_client_nor_transformers():
    heavy = ("sacremoses", "huggingface_hub", "transformers")
    code = f"import sys, xlm; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
