"""xlm: a readable PyTorch reimplementation of XLM (Lample & Conneau, 2019), equal to transformers' logits.

    import torch, xlm
    model = xlm.load_pretrained("FacebookAI/xlm-clm-enfr-1024")        # or a local directory
    tokenizer = xlm.Tokenizer.from_pretrained("FacebookAI/xlm-clm-enfr-1024")
    input_ids = torch.tensor([tokenizer.encode("Wikipedia was used to", "en")])
    logits = model(input_ids, tokenizer.lang2id["en"], causal=True)   # (1, T, 64139)

Where things are: xlm/model.py (the network, read it first), xlm/config.py (presets), xlm/checkpoint.py
(loading), xlm/tokenizer.py, xlm/generate.py, xlm/scoring.py, xlm/parity.py; opt-in speed: xlm/fast.py (CPU
kernels), xlm/distributed.py (scoring under torchrun). The names below are imported on
first use, so `import xlm` stays cheap (the tokenizer's Moses and the hub client load only when needed).
"""

from importlib import import_module

from xlm.errors import CheckpointError, ConfigError, InputError, TokenizerError, XLMError

_LAZY = {
    "XLMConfig": "xlm.config",
    "PRESETS": "xlm.config",
    "XLM": "xlm.model",
    "KVCache": "xlm.model",
    "load_pretrained": "xlm.checkpoint",
    "Tokenizer": "xlm.tokenizer",
    "generate": "xlm.generate",
    "Generation": "xlm.generate",
    "token_logprobs": "xlm.scoring",
    "sentence_logprob": "xlm.scoring",
    "corpus_perplexity": "xlm.scoring",
    "fill_mask": "xlm.scoring",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["CheckpointError", "ConfigError", "InputError", "TokenizerError", "XLMError", *_LAZY]
