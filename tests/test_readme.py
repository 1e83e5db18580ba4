"""The README's getting-started snippet runs as written, against a hub cache holding the full-size
architecture (seeded weights written by transformers) and the real enfr tokenizer files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REPO = "FacebookAI/xlm-clm-enfr-1024"


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_getting_started_snippet(fake_hub, full_size_checkpoint, enfr_tokenizer_dir, monkeypatch):
    from huggingface_hub import constants

    files = {name: full_size_checkpoint / name for name in ("config.json", "model.safetensors")}
    files |= {name: enfr_tokenizer_dir / name for name in ("vocab.json", "merges.txt", "tokenizer_config.json")}
    fake_hub.add(REPO, "0" * 40, files)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    namespace: dict = {}
    exec(readme_block("Getting started: the model card's snippet, the xlm way"), namespace)
    assert namespace["input_ids"].tolist() == [[0, 4018, 5545, 51104, 32, 308, 18, 1]]  # the vocab README's vector
    assert namespace["language_id"] == 0 and namespace["langs"].tolist() == [[0] * 8]
    assert namespace["logits"].shape == (1, 8, 64139) and namespace["model"].config.objective == "clm"
    assert namespace["next_token"] == namespace["logits"][0, -2].argmax()
    with torch.no_grad():  # causal: the prediction after "to" does not depend on the </s> after it
        without_eos = namespace["model"](namespace["input_ids"][:, :-1], 0, causal=True)
    torch.testing.assert_close(without_eos[0, -1], namespace["logits"][0, -2], rtol=0, atol=1e-5)
