"""xlm: a readable PyTorch reimplementation of XLM (Lample & Conneau, 2019), equal to transformers' logits.

    import torch, xlm
    model = xlm.load_pretrained("FacebookAI/xlm-clm-enfr-1024")        # or a local directory
    tokenizer = xlm.Tokenizer.from_pretrained("FacebookAI/xlm-clm-enfr-1024")
    input_ids = torch.tensor([tokenizer.encode("Wikipedia was used to", "en")])
    logits = model(input_ids, tokenizer.lang2id["en"], causal=True)   # (1, T, 64139)

Where things are: xlm/model.py (the network, read it first), xlm/inputs.py (special ids, padding, language ids
and their checks), xlm/config.py (presets), xlm/checkpoint.py (loading), xlm/tokenizer.py, xlm/generation.py,
xlm/scoring.py, xlm/parity.py, xlm/synthetic.py (offline checkpoints); opt-in speed: xlm/fast.py (CPU kernels),
xlm/distributed.py (scoring under torchrun).

The names below, and the submodules (`xlm.synthetic`, `xlm.fast`, ...), are imported on first use, so that
`import xlm` stays cheap (the tokenizer's Moses and the hub client load only when needed). No submodule shares a
name with a function: `xlm.generate` is the function whatever has been imported.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pkgutil import iter_modules

from xlm.errors import CheckpointError, ConfigError, InputError, TokenizerError, XLMError

try:
    __version__ = version("xlm")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

_LAZY = {
    "XLMConfig": "xlm.config",
    "PRESETS": "xlm.config",
    "XLM": "xlm.model",
    "KVCache": "xlm.model",
    "load_pretrained": "xlm.checkpoint",
    "Tokenizer": "xlm.tokenizer",
    "Batch": "xlm.inputs",
    "generate": "xlm.generation",
    "Generation": "xlm.generation",
    "token_logprobs": "xlm.scoring",
    "sentence_logprob": "xlm.scoring",
    "corpus_perplexity": "xlm.scoring",
    "fill_mask": "xlm.scoring",
}
# Every module of the package, by name (xlm/*.py): `xlm.synthetic` works after a plain `import xlm`.
SUBMODULES = frozenset(module.name for module in iter_modules(__path__) if not module.name.startswith("_"))


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in SUBMODULES:
        return import_module(f"xlm.{name}")
    raise AttributeError(f"module 'xlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *SUBMODULES])


__all__ = ["CheckpointError", "ConfigError", "InputError", "TokenizerError", "XLMError", "__version__", *_LAZY]
