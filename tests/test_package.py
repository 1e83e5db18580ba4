"""The package surface: what `import xlm` offers, that it keeps meaning it, and what it does not load."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xlm
import xlm.cli

ROOT = Path(__file__).resolve().parents[1]
EVERY_SUBMODULE = sorted(m.name for m in pkgutil.iter_modules(xlm.__path__) if not m.name.startswith("_"))


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module", autouse=True)
def every_submodule_imported():
    """Importing a submodule sets an attribute of the package: every test here runs after all of them did."""
    for name in EVERY_SUBMODULE:
        importlib.import_module(f"xlm.{name}")


def test_no_submodule_shares_a_name_with_a_public_name():
    assert not set(EVERY_SUBMODULE) & set(xlm.__all__)
    assert set(EVERY_SUBMODULE) == xlm.SUBMODULES


def test_every_public_name_is_what_it_says_after_every_submodule_is_imported():
    """`xlm.generate` was the submodule, not the function, once anything imported `xlm.generate` (scoring did)."""
    for name in xlm.__all__:
        value = getattr(xlm, name)
        assert not inspect.ismodule(value), name
        if name != "__version__" and name != "PRESETS":
            assert value.__name__ == name, name
    assert inspect.isfunction(xlm.generate) and xlm.generate.__module__ == "xlm.generation"


def test_every_public_name_runs_on_a_small_real_input(tiny_checkpoint):
    """Each name of `xlm.__all__`, called as a user calls it, on a scaled-down checkpoint written by transformers."""
    clm, mlm = tiny_checkpoint("xlm-clm-enfr-1024"), tiny_checkpoint("xlm-mlm-enfr-1024")
    model = xlm.load_pretrained(clm)
    tokenizer = xlm.Tokenizer.from_pretrained(clm)
    batch = tokenizer.batch(["the cat", "le chat noir"], ["en", "fr"])
    assert isinstance(batch, xlm.Batch)
    called = {"load_pretrained", "Tokenizer", "Batch"}

    with torch.no_grad():
        logits = model(**batch, causal=True)
    assert logits.shape == (*batch.input_ids.shape, model.config.vocab_size)
    config = xlm.XLMConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, languages=("en",))
    assert xlm.XLM(config)(torch.tensor([[1, 20, 21]]), 0, causal=True).shape == (1, 3, 64)
    assert xlm.PRESETS["xlm-clm-enfr-1024"].dim == 1024
    cache = xlm.KVCache(model.config, 1, 8, dtype=torch.float32, device="cpu")
    assert cache.max_len == 8
    called |= {"XLM", "XLMConfig", "PRESETS", "KVCache"}

    prompt = torch.tensor([tokenizer.encode("the cat", "en")[:-1]])
    out = xlm.generate(model, prompt, 0, max_new_tokens=3, stop_at_eos=False)
    assert isinstance(out, xlm.Generation) and out.tokens.shape == (1, 3)
    sentence = torch.tensor([tokenizer.encode("the cat", "en")])
    per_token = xlm.token_logprobs(model, sentence, 0)
    torch.testing.assert_close(xlm.sentence_logprob(model, sentence, 0), per_token.sum(dim=1))
    perplexity = xlm.corpus_perplexity(model, [sentence[0].tolist()], 0)
    assert perplexity.tokens == sentence.size(1) - 1 and perplexity.perplexity > 1
    masked = torch.tensor([tokenizer.encode("the <special1> is black", "en")])
    fills = xlm.fill_mask(xlm.load_pretrained(mlm), masked, 0, top_k=2)
    assert len(fills) == 1 and len(fills[0].token_ids) == 2
    called |= {"generate", "Generation", "token_logprobs", "sentence_logprob", "corpus_perplexity", "fill_mask"}

    for error in ("XLMError", "InputError", "CheckpointError", "ConfigError", "TokenizerError"):
        with pytest.raises(xlm.XLMError, match="one line"):
            raise getattr(xlm, error)("one line")
    called |= {"XLMError", "InputError", "CheckpointError", "ConfigError", "TokenizerError", "__version__"}
    assert called == set(xlm.__all__)  # a new public name needs its line here


def test_the_version_is_pyproject_s():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert xlm.__version__ == re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)


def test_xlm_version_prints_it(capsys):
    with pytest.raises(SystemExit) as done:
        xlm.cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"xlm {xlm.__version__}\n"


def test_readme_offline_path_works_after_a_plain_import():
    """README: `import xlm`, then `xlm.synthetic.synthetic_checkpoint(...)` (a fresh process: nothing imported)."""
    assert run_python("import xlm; print(xlm.synthetic.synthetic_checkpoint.__name__)") == "synthetic_checkpoint"
    assert run_python("import xlm, xlm.scoring; print(callable(xlm.generate))") == "True"


def test_import_xlm_loads_neither_moses_nor_the_hub_client_nor_transformers():
    heavy = ("sacremoses", "huggingface_hub", "transformers")
    assert run_python(f"import sys, xlm; print(sorted(m for m in {heavy} if m in sys.modules))") == "[]"
