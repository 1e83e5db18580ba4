"""Converting checkpoints: facebookresearch/XLM's original `.pth` files into transformers' layout, and any XLM
state dict into a deterministic `model.safetensors`.

An original checkpoint (`mlm_enfr_1024.pth` and friends, saved by `Trainer.save_checkpoint` in xlm/trainer.py) is
one pickled dict:
    model (or encoder, decoder)   the state dict; keys without `transformer.`, `module.` when saved from DDP;
                                  `pred_layer.proj.weight` stored although it is the word embeddings (tied)
    params                        the training options, `vars(params)` of the trainer: architecture, languages,
                                  data paths, and a few tensors and numpy arrays (`pred_probs`, `mask_scores`)
    dico_id2word, dico_word2id, dico_counts    the vocabulary: <s> </s> <pad> <unk> <special0..9>, then BPE
                                  pieces by frequency, `@@` marking a piece that does not end a word
    epoch, n_total_iter, best_metrics, ..._optimizer           training state, ignored here
`convert_original` turns it into a directory that transformers and `xlm.load_pretrained` both load: config.json,
model.safetensors, vocab.json, merges.txt (the fastBPE codes file, which the checkpoint does not contain) and
tokenizer_config.json.

The file is read with the weights-only unpickler plus numpy's array, scalar and dtype classes: building those
allocates data and calls nothing else, and the trainer stores numpy values in `params` and the metrics. Anything
else the file asks for (a class, a function) is refused: a pickle can name any callable, and a plain `torch.load`
would call it. There is deliberately no option to unpickle anyway (docs/checkpoints.md says why).

The output directory is written through `xlm.files.atomic_directory`: complete or absent, never an input nor a
folder holding one, one writer at a time; inputs are only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlm.bpe import piece_from_fastbpe
from xlm.checkpoint import checkpoint_name, convert_state_dict, load_state_dict_into, map_key, torch_load_weights_only
from xlm.cliutil import OneLineParser, run_tool
from xlm.config import XLMConfig, from_hf_config
from xlm.errors import CheckpointError, ConfigError
from xlm.files import atomic_directory, write_json, write_safetensors
from xlm.inputs import SPECIAL_TOKENS

try:  # numpy >= 2
    from numpy._core import multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray


def _numpy_data_globals() -> list[Any]:
    """numpy's array, scalar and dtype rebuilders, under both module names (numpy 1 wrote `numpy.core.*`)."""
    rebuilders = [
        (function, f"{module}.{function.__name__}")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for function in (multiarray._reconstruct, multiarray.scalar)
    ]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    return [np.ndarray, np.dtype, *rebuilders, *sorted(dtype_classes, key=str)]


NUMPY_DATA_GLOBALS = _numpy_data_globals()

# The training options that describe the model. XLM's `params` and transformers' config.json use the same names
# (transformers' own converter dumped `params` as the config), so they are copied as they are, then checked by
# `from_hf_config`, which rejects what this implementation does not support (asm, sinusoidal, ReLU, memory layers).
REQUIRED_PARAMS = (
    "n_words", "emb_dim", "n_layers", "n_heads", "n_langs", "id2lang", "lang2id", "dropout", "attention_dropout",
    "gelu_activation", "share_inout_emb", "sinusoidal_embeddings", "asm", "eos_index", "pad_index",
)  # fmt: skip
OPTIONAL_PARAMS = ("use_lang_emb", "use_memory", "bos_index", "unk_index", "mask_index")
OBJECTIVE_PARAMS = ("clm_steps", "mlm_steps")  # how it was trained; from_hf_config reads the objective from them


# --- Reading an original checkpoint -------------------------------------------------------------------------


def read_original(path: Path) -> dict[str, Any]:
    """An original XLM checkpoint as a dict, read with the weights-only unpickler plus numpy's data classes."""
    checkpoint = torch_load_weights_only(path, NUMPY_DATA_GLOBALS)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not an XLM checkpoint dict")
    missing = [key for key in ("params", "dico_id2word", "dico_word2id") if key not in checkpoint]
    if missing or not ("model" in checkpoint or "encoder" in checkpoint):
        keys = ", ".join(sorted(map(str, checkpoint)))
        raise CheckpointError(f"{path} is not a facebookresearch/XLM checkpoint (it has {keys})")
    return checkpoint


def original_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The language model's tensors: `model` for a pretrained LM, else the `encoder` of a translation model."""
    state = checkpoint["model"] if "model" in checkpoint else checkpoint["encoder"]
    if not isinstance(state, Mapping) or not all(isinstance(t, Tensor) for t in state.values()):
        raise CheckpointError("the checkpoint's model is not a state dict of tensors")
    return dict(state)


def transformers_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The same tensors under transformers' names (`transformer.` + the original name; the head's bias as is).

    The stored copy of the tied head is checked equal to the word embeddings (a difference is an error: the file
    is not a model XLM can represent) and dropped; buffers are dropped. Unknown keys are errors.
    """
    convert_state_dict(dict(state))  # the checks: known keys only, a stored head equal to the embeddings
    renamed = {}
    for key, tensor in state.items():
        if map_key(key) is not None:
            name = checkpoint_name(key)
            renamed[name if name.startswith("pred_layer.") else f"transformer.{name}"] = tensor
    return renamed


def config_from_params(params: Mapping[str, Any], n_words: int, name: str | None = None) -> tuple[XLMConfig, dict]:
    """The model's `XLMConfig` and transformers `config.json` from the original training `params`."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"params is a {type(params).__name__}, not a dict")
    missing = [key for key in REQUIRED_PARAMS if key not in params]
    if missing:
        raise ConfigError(f"params lacks {', '.join(missing)}: not the params of a facebookresearch/XLM model")
    used = [key for key in (*REQUIRED_PARAMS, *OPTIONAL_PARAMS, *OBJECTIVE_PARAMS) if key in params]
    values = {key: _plain(params[key]) for key in used}
    if values["n_words"] != n_words:
        raise ConfigError(f"params says n_words={values['n_words']}, but the dictionary has {n_words} words")
    config = from_hf_config({"model_type": "xlm", **values}, name=name)
    steps = {key: values[key] for key in OBJECTIVE_PARAMS if key in values}
    return config, {**config.to_hf_config(), **steps}


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as JSON's plain values (params hold both)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- The vocabulary and the tokenizer files -----------------------------------------------------------------


def vocab_from_dictionary(id2word: Mapping[int, str], word2id: Mapping[str, int]) -> dict[str, int]:
    """transformers' `vocab.json` from XLM's dictionary: a word-final piece gains `</w>`, `un@@` becomes `un`.

    The rule is xlm.bpe.piece_from_fastbpe, fastBPE's (only a final `@@` continues a word: transformers'
    converter turns `a@@b` into `ab`); the specials, ids 0..13, are kept as they are. The dictionary is
    checked as XLM's `Dictionary.check_valid` does, and no two words may become the same piece.
    """
    n_words = len(id2word)
    if sorted(id2word) != list(range(n_words)) or {w: i for i, w in id2word.items()} != dict(word2id):
        raise CheckpointError("the checkpoint's dico_id2word and dico_word2id do not describe one dictionary")
    if tuple(id2word[i] for i in range(len(SPECIAL_TOKENS))) != SPECIAL_TOKENS:
        raise CheckpointError(f"the dictionary does not start with XLM's specials {' '.join(SPECIAL_TOKENS)}")
    vocab: dict[str, int] = {}
    for i in range(n_words):
        word = id2word[i]
        piece = piece_from_fastbpe(word) if i >= len(SPECIAL_TOKENS) else word
        if piece in vocab:
            raise CheckpointError(f"dictionary words {id2word[vocab[piece]]!r} and {word!r} are both piece {piece!r}")
        vocab[piece] = i
    return vocab


def tokenizer_config(config: XLMConfig, vocab: Mapping[str, int]) -> dict[str, Any]:
    """transformers' `tokenizer_config.json`: the languages, and lowercasing as the data was prepared.

    XLM lowercased (and stripped accents from) the data of some models only (XNLI-15, English), with one tool
    that does both; a vocabulary without an uppercase letter was built from such data.
    """
    lowercase = not any(char.isupper() for piece in vocab for char in piece)
    return {
        "do_lowercase_and_remove_accent": lowercase,
        "id2lang": {str(i): lang for i, lang in enumerate(config.languages)},
        "lang2id": config.lang2id,
        "model_max_length": config.max_positions,
    }


def read_codes(path: Path) -> bytes:
    """A fastBPE codes file (`left right count` per line), which is transformers' `merges.txt` as it is.

    A missing final newline is added: transformers reads `text.split("\\n")[:-1]` and would drop the last merge.
    """
    try:
        data = path.read_bytes()
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read BPE codes {path}: {err}") from None
    for number, line in enumerate(lines, 1):
        if len(line.split()) not in (2, 3):
            raise CheckpointError(f"{path}:{number} is not a fastBPE merge 'left right count': {line[:40]!r}")
    return data if data.endswith(b"\n") or not data else data + b"\n"


# --- The conversion -----------------------------------------------------------------------------------------


def convert_original(checkpoint: str | Path, codes: str | Path, out_dir: str | Path, *, force: bool = False) -> Path:
    """Convert an original XLM checkpoint and its fastBPE codes into a transformers-layout directory.

    The output holds config.json (from `params`), model.safetensors (the tied head checked, then dropped),
    vocab.json (from the dictionary), merges.txt (the codes) and tokenizer_config.json. It is checked before it
    is written: the config is validated, every tensor's name and shape must match it. Returns `out_dir`.
    """
    checkpoint, codes, out_dir = Path(checkpoint), Path(codes), Path(out_dir)
    for path in (checkpoint, codes):  # a device (/dev/zero) or a pipe would be read forever
        if path.exists() and not path.is_file():
            raise CheckpointError(f"{path} is not a regular file")
    with atomic_directory(out_dir, replace=force, inputs=(checkpoint, codes)) as tmp:
        original = read_original(checkpoint)
        vocab = vocab_from_dictionary(original["dico_id2word"], original["dico_word2id"])
        config, hf_config = config_from_params(original["params"], len(vocab), name=out_dir.name)
        tensors = transformers_state_dict(original_state_dict(original))
        load_state_dict_into(config, tensors, torch.float32, "meta")  # names and shapes, without copying data
        merges = read_codes(codes)
        write_json(tmp / "config.json", hf_config, sort_keys=True)
        write_safetensors(tensors, tmp / "model.safetensors")
        write_json(tmp / "vocab.json", vocab)
        (tmp / "merges.txt").write_bytes(merges)
        write_json(tmp / "tokenizer_config.json", tokenizer_config(config, vocab))
    return out_dir


def build_parser(prog: str = "convert_original") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog, description="Convert an original facebookresearch/XLM checkpoint (.pth) to transformers' layout."
    )
    parser.add_argument("checkpoint", metavar="CKPT.pth", help="the original checkpoint, e.g. mlm_enfr_1024.pth")
    parser.add_argument("--codes", required=True, help="its fastBPE codes file (e.g. codes_enfr), becomes merges.txt")
    parser.add_argument("--out", required=True, metavar="DIR", help="the directory to create")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists")
    return parser


def main(argv: list[str] | None = None, prog: str = "convert_original") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_tool(prog, lambda: _convert_and_report(args))


def _convert_and_report(args: argparse.Namespace) -> int:
    out = convert_original(args.checkpoint, args.codes, args.out, force=args.force)
    config = from_hf_config(out / "config.json", name=out.name)
    print(
        f"{out}: {config.n_layers} layers, dim {config.dim}, {config.vocab_size} words, "
        f"languages {' '.join(config.languages)}, objective {config.objective or 'unknown'}"
    )
    return 0
