"""Loading XLM weights: transformers' layout or the original XLM state dict, into `xlm.model.XLM`.

The recipe (gpt-fast's `_load_model`): build the model on the meta device (no memory, no init), read the
tensors zero-copy from safetensors (mmap) or with `torch.load(weights_only=True)`, rename the keys through one
small table, check names and shapes, then `load_state_dict(strict=True, assign=True)`: the model's parameters
become the loaded tensors. The head needs no re-tying: `XLM.logits` reads `embeddings.weight` itself.

Checkpoint names: transformers prefixes the encoder with `transformer.`; the original code has no prefix, or
`module.` when saved from DistributedDataParallel. Both map onto ours through `KEY_TABLE`.

Where the files come from is xlm/hub.py's business: a local path, or a hub id fetched into huggingface_hub's
cache. Original `.pth` checkpoints with their dictionary and params are converted by xlm/convert.py.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from xlm.config import Objective, XLMConfig, from_hf_config
from xlm.errors import CheckpointError, ConfigError
from xlm.files import os_error_message
from xlm.hub import WEIGHT_FILES, read_weight_map, resolve_checkpoint
from xlm.model import XLM

# The dtypes a model can be loaded in, by the names the command-line tools use.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Original/transformers name (prefixes stripped) -> ours. `{}` stands for the layer index; None drops the key.
KEY_TABLE: dict[str, str | None] = {
    "embeddings.weight": "embeddings.weight",
    "position_embeddings.weight": "position_embeddings.weight",
    "lang_embeddings.weight": "lang_embeddings.weight",
    "layer_norm_emb.weight": "layer_norm_emb.weight",
    "layer_norm_emb.bias": "layer_norm_emb.bias",
    "attentions.{}.q_lin.weight": "blocks.{}.attention.q_lin.weight",
    "attentions.{}.q_lin.bias": "blocks.{}.attention.q_lin.bias",
    "attentions.{}.k_lin.weight": "blocks.{}.attention.k_lin.weight",
    "attentions.{}.k_lin.bias": "blocks.{}.attention.k_lin.bias",
    "attentions.{}.v_lin.weight": "blocks.{}.attention.v_lin.weight",
    "attentions.{}.v_lin.bias": "blocks.{}.attention.v_lin.bias",
    "attentions.{}.out_lin.weight": "blocks.{}.attention.out_lin.weight",
    "attentions.{}.out_lin.bias": "blocks.{}.attention.out_lin.bias",
    "layer_norm1.{}.weight": "blocks.{}.layer_norm1.weight",
    "layer_norm1.{}.bias": "blocks.{}.layer_norm1.bias",
    "ffns.{}.lin1.weight": "blocks.{}.ffn.lin1.weight",
    "ffns.{}.lin1.bias": "blocks.{}.ffn.lin1.bias",
    "ffns.{}.lin2.weight": "blocks.{}.ffn.lin2.weight",
    "ffns.{}.lin2.bias": "blocks.{}.ffn.lin2.bias",
    "layer_norm2.{}.weight": "blocks.{}.layer_norm2.weight",
    "layer_norm2.{}.bias": "blocks.{}.layer_norm2.bias",
    "pred_layer.proj.bias": "output_bias",
    "pred_layer.proj.weight": None,  # the tied head, stored by old files: checked equal to the embeddings
    "position_ids": None,  # a non-persistent buffer that some transformers versions saved anyway
}
TIED_HEAD_KEY = "pred_layer.proj.weight"
_PREFIXES = ("module.", "transformer.")


def _template(key: str) -> tuple[str, str | None]:
    """`attentions.3.q_lin.weight` -> (`attentions.{}.q_lin.weight`, "3")."""
    match = re.search(r"\.(\d+)\.", key)
    if match is None:
        return key, None
    return key[: match.start()] + ".{}." + key[match.end() :], match.group(1)


def checkpoint_name(key: str) -> str:
    """A checkpoint key without the `module.`/`transformer.` prefixes: the name KEY_TABLE is written in."""
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def map_key(key: str) -> str | None:
    """Our name for a checkpoint key (transformers' or the original's), None for a key we drop."""
    template, layer = _template(checkpoint_name(key))
    if template not in KEY_TABLE:
        raise CheckpointError(f"checkpoint has an unexpected tensor {key!r}: not part of an XLM language model")
    ours = KEY_TABLE[template]
    return None if ours is None else ours.format(layer)


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers or original XLM state dict to ours; tied-head copies are checked and dropped.

    Two keys that name one tensor (`transformer.embeddings.weight` and `embeddings.weight`, or a `module.`
    copy) are an error naming both: which one the file means cannot be known, and taking the last would be a
    silent guess.
    """
    _check_no_aliases(state)
    converted = {ours: tensor for key, tensor in state.items() if (ours := map_key(key)) is not None}
    head = next((t for k, t in state.items() if checkpoint_name(k) == TIED_HEAD_KEY), None)
    if head is not None:
        _check_tied_head(head, converted.get("embeddings.weight"))
    return converted


def _check_no_aliases(state: dict[str, Tensor]) -> None:
    seen: dict[str, str] = {}
    for key in state:
        name = checkpoint_name(key)
        if name in seen:
            first, second = sorted((seen[name], key))
            raise CheckpointError(f"checkpoint has both {first!r} and {second!r}: two tensors for {name!r}")
        seen[name] = key


def _check_tied_head(head: Tensor, embeddings: Tensor | None) -> None:
    """XLM ties the output projection to the word embeddings; a stored copy must be that copy."""
    if embeddings is None or head.shape != embeddings.shape or not torch.equal(head, embeddings):
        raise CheckpointError(
            f"checkpoint stores {TIED_HEAD_KEY} different from the word embeddings; XLM ties them "
            "(share_inout_emb), so this checkpoint is not one the model can represent"
        )


# --- Reading tensors ----------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Tensors of one .safetensors file, memory-mapped (no copy until a tensor is touched or cast)."""
    try:
        path.open("rb").close()  # safetensors reports an unreadable file as "No such file or directory"
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield key, f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path}: {err} (truncated or not a safetensors file?)") from None


def torch_load_weights_only(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """`torch.load` with the weights-only unpickler: it rebuilds tensors, containers and plain values only.

    A pickle is a program: a normal `torch.load` calls whatever function the file names (`os.system`, ...). The
    weights-only unpickler refuses every global outside an allowlist, so reading a file runs none of its code.
    `allowed_globals` adds classes that rebuild data and nothing else (xlm/convert.py adds numpy's).
    """
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_failure(path, str(err))) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}".splitlines()[0]) from None
    except KeyError:  # the unpickler met a byte that is no pickle opcode
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint") from None


def _unpickling_failure(path: Path, message: str) -> str:
    """What the weights-only unpickler refused, in one line.

    torch's own message is a paragraph that suggests `weights_only=False`: the one thing not to do with a file
    of unknown origin.
    """
    if match := re.search(r"GLOBAL (\S+)", message):
        refused = f"it asks the unpickler for {match.group(1)}"
    elif match := re.search(r"but got <class '([^']+)'>", message):
        refused = f"it asks the unpickler to build a {match.group(1)}"
    else:  # an opcode the unpickler does not know: a damaged file, or no pickle at all
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", message)
        return (
            f"cannot read {path}: not a PyTorch checkpoint ({detail.group(1) if detail else message.splitlines()[0]})"
        )
    return f"{path} is not plain weights: {refused}; refusing to unpickle it (that could run code from the file)"


def read_torch_pickle(path: Path) -> dict[str, Tensor]:
    """A `pytorch_model.bin`/`.pth` state dict, read with the weights-only unpickler (it runs no code)."""
    state = torch_load_weights_only(path)
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def read_state_dict(weights: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint: one .safetensors, a sharded index, or a torch pickle."""
    if weights.name.endswith(".index.json"):
        return read_shards(weights)
    if weights.suffix == ".safetensors":
        return dict(read_safetensors(weights))
    return read_torch_pickle(weights)


def read_shards(index: Path) -> dict[str, Tensor]:
    """The tensors of a sharded checkpoint, each from the shard its index's `weight_map` names, and only there.

    A tensor in two shards, in a shard the index does not name for it, or named but absent, is an error
    naming the tensor: the index is the file's statement of where each tensor is, and it must be true.
    """
    weight_map = read_weight_map(index)
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        for key, tensor in read_safetensors(index.parent / shard):
            if weight_map.get(key) != shard:
                where = f"names {weight_map[key]}" if key in weight_map else "does not list it"
                raise CheckpointError(f"{key!r} is in shard {shard}, but {index.name} {where}")
            state[key] = tensor
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index.name} lists {missing[0]!r} in {weight_map[missing[0]]}, which lacks it")
    return state


def find_weights(directory: Path) -> Path:
    """The weights file of a transformers-layout directory, safetensors preferred."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
        if os.path.lexists(directory / name):  # a directory, a dangling link, a device: not to be skipped silently
            raise CheckpointError(f"{directory / name} is not a readable file")
    raise CheckpointError(f"{directory} has no weights file ({', '.join(WEIGHT_FILES)})")


# --- Building the model -------------------------------------------------------------------------------------


@contextmanager
def _no_normal_init() -> Iterator[None]:
    """Skip `nn.init.normal_` while building on the meta device: the loaded weights replace its values anyway.

    Every other initialiser has a C++ meta kernel; `normal_`'s is Python that torch imports on first use, which
    costs a fresh process ~1 s and ~75 MB (tests/test_checkpoint.py).
    """
    normal = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        torch.nn.init.normal_ = normal


def load_state_dict_into(
    config: XLMConfig, state: dict[str, Tensor], dtype: torch.dtype, device, attention: str = "sdpa"
) -> XLM:
    """Build XLM on the meta device and make `state` (transformers or original names) its parameters."""
    converted = convert_state_dict(state)
    with torch.device("meta"), _no_normal_init():
        model = XLM(config, attention=attention)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s) the config needs, first: {missing[0]}")
    unexpected = [k for k in converted if k not in expected]
    if unexpected:
        raise CheckpointError(f"checkpoint has tensor(s) the config does not describe, first: {unexpected[0]}")
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{key} has shape {tuple(tensor.shape)}, the config implies {tuple(expected[key].shape)}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{key} is {tensor.dtype}, not floating point")
        converted[key] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: XLMConfig | str | Path | None = None,
    objective: Objective | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    attention: str = "sdpa",
) -> XLM:
    """An XLM from a checkpoint: a transformers-layout directory, a weights file with a config, or a hub id.

    path: a directory holding `config.json` and `model.safetensors` (or `model.safetensors.index.json`, or
        `pytorch_model.bin`), or a single `.safetensors`/`.bin` file with `config` or a `config.json` beside it.
        A path that does not exist is a hub id (`FacebookAI/xlm-clm-enfr-1024`, or the legacy `xlm-clm-enfr-1024`),
        fetched through huggingface_hub's cache (xlm/hub.py).
    config: an `XLMConfig`, or a path to a transformers `config.json` (default: the one in/beside `path`).
    objective: "clm" or "mlm" when the config cannot tell (see `xlm.config.from_hf_config`).
    revision: a hub branch, tag or commit (default main). local_files_only: hub cache only (None: `HF_HUB_OFFLINE`).
    attention: "sdpa" (default) or "reference", as `XLM(config, attention=...)`.
    Returns the model in eval mode, its parameters in `dtype` on `device`.
    """
    try:
        source = resolve_checkpoint(path, revision=revision, local_files_only=local_files_only)
        weights = find_weights(source) if source.is_dir() else source
        if not isinstance(config, XLMConfig):
            config_path = Path(config) if config is not None else weights.parent / "config.json"
            # A preset's name tells the objective: the local directory's, or the hub id (not the snapshot's folder).
            name = str(weights.parent) if source == Path(path) else str(path)
            try:
                config = from_hf_config(config_path, name=name, objective=objective)
            except ConfigError as err:
                raise ConfigError(str(err) if str(config_path) in str(err) else f"{config_path}: {err}") from None
        return load_state_dict_into(config, read_state_dict(weights), dtype, device, attention)
    except OSError as err:  # an unreadable directory or file met on the way (a permission, a link loop)
        raise CheckpointError(f"cannot read checkpoint {path}: {os_error_message(err)}") from None
