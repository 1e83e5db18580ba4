"""What every command-line tool of xlm shares: the one-line error contract, exit codes, device checks.

Exit codes: 0 success; 1 a check that ran and failed (parity); 2 bad input, as one line on stderr
(`PROG: error: ...`), whether argparse or the tool found it; 130 interrupted by Ctrl-C, as one line too. 130 is
128 + SIGINT, what a shell reports for a process that SIGINT ended: a script can tell "interrupted" from "bad
input", and the tool has cleaned up (an output directory being written is removed, xlm/files.py). 141 (128 +
SIGPIPE), silently, when the reader of stdout went away (`| head -1`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

from xlm.errors import InputError, XLMError
from xlm.files import os_error_message

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader closed the pipe


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.splitlines())}\n")


def run_tool(prog: str, tool: Callable[[], int]) -> int:
    """`tool()`'s exit code; an `XLMError`, an `OSError` or Ctrl-C becomes one line on stderr, exit code 2 or 130.

    stdout writes undecodable command-line bytes back as they came (surrogateescape): a path that is not UTF-8
    is printed as the bytes the user typed, not as a UnicodeEncodeError.
    """
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        code = tool()
        sys.stdout.flush()  # a reader gone before the last buffered line shows here, not in the exit's own flush
        return code
    except BrokenPipeError:  # the reader went away (`xlm score ... | head -1`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
        return EXIT_BROKEN_PIPE
    except XLMError as err:
        print(f"{prog}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a file or device the tool met on the way: the user's environment, not a bug
        print(f"{prog}: error: {os_error_message(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED


def usable_device(name: str) -> torch.device:
    """`name` as a torch device this machine can compute on; a one-line `InputError` otherwise.

    `meta` is refused: it holds shapes and no data, so nothing computed on it can be printed.
    """
    try:
        device = torch.device(name)
        if device.type == "meta":
            raise InputError(f"device {name!r} holds no data (shapes only); use cpu, cuda or mps")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:  # a misspelt device, or no CUDA in this build
        reason = str(err).splitlines()[0].split(". ")[0]  # torch's first sentence; the rest lists its backends
        raise InputError(f"device {name!r} is not usable here: {reason}") from None
    return device
