"""The project's exceptions: every expected failure is one of these, with a one-line message.

Callers (the CLI, the scripts) catch `XLMError` and print its message; anything else is a bug. Their argument
parsers (`OneLineParser`) keep the same contract: one line on stderr, exit code 2.
"""

import argparse


class XLMError(Exception):
    """Base class: a problem with the user's input, files or environment, stated in one line."""


class ConfigError(XLMError):
    """A config that this implementation does not support, or that is inconsistent."""


class CheckpointError(XLMError):
    """A checkpoint that cannot be read: missing, truncated, wrong keys or shapes, unsafe pickle."""


class TokenizerError(XLMError):
    """Tokenizer files that cannot be read, an unknown language, an id outside the vocabulary."""


class InputError(XLMError):
    """Model inputs that the model cannot take: ids or languages out of range, too many positions."""


class DataError(XLMError):
    """Training data that cannot be prepared or read: missing or empty files, misaligned pairs, a corpus
    prepared with another vocabulary, a truncated or corrupt array."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
