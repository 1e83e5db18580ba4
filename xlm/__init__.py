"""xlm: a readable PyTorch reimplementation of XLM (Lample & Conneau, 2019)."""

from xlm.errors import CheckpointError, ConfigError, InputError, TokenizerError, XLMError

__all__ = ["CheckpointError", "ConfigError", "InputError", "TokenizerError", "XLMError"]
