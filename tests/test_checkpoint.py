"""The loader: checkpoint layouts it reads, and bad checkpoints it refuses with a message that names the problem."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xlm.checkpoint
from xlm.checkpoint import load_pretrained, map_key
from xlm.config import PRESETS
from xlm.errors import CheckpointError, ConfigError
from xlm.model import XLM
from xlm.synthetic import import_transformers


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def rewrite_weights(directory: Path, change) -> None:
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


# --- Layouts that load --------------------------------------------------------------------------------------


SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
FIRST = "pred_layer.proj.bias"  # the first name in sorted order: `shard` puts it in SHARDS[0]


def shard(directory: Path, weight_map_change=None, extra: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Split model.safetensors into two shards and an index (its weight_map changed by `weight_map_change`).

    extra: shard -> keys written into that shard too (a tensor stored twice). Returns the index's weight_map.
    """
    state = load_file(directory / "model.safetensors")
    names = sorted(state)
    shards = {SHARDS[0]: names[::2], SHARDS[1]: names[1::2]}
    for name, keys in shards.items():
        keys = keys + (extra or {}).get(name, [])
        save_file({k: state[k] for k in keys}, directory / name, metadata={"format": "pt"})
    weight_map = {key: name for name, keys in shards.items() for key in keys}
    if weight_map_change is not None:
        weight_map_change(weight_map)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    return weight_map


def test_a_sharded_checkpoint_loads(tiny_checkpoint):
    directory = tiny_checkpoint()
    reference = load_pretrained(directory)
    shard(directory)
    assert same_weights(load_pretrained(directory), reference)


def test_a_single_safetensors_file_loads_with_its_config(tiny_checkpoint, tmp_path):
    directory = tiny_checkpoint()
    reference = load_pretrained(directory)
    assert same_weights(load_pretrained(directory / "model.safetensors"), reference)  # config.json beside it
    alone = tmp_path / "elsewhere" / "weights.safetensors"
    alone.parent.mkdir()
    shutil.copy(directory / "model.safetensors", alone)
    with pytest.raises(ConfigError, match=r"no config file at .*elsewhere/config\.json"):
        load_pretrained(alone)
    assert same_weights(load_pretrained(alone, config=directory / "config.json"), reference)


def test_pytorch_model_bin_is_read_with_the_weights_only_unpickler(tiny_checkpoint, monkeypatch):
    directory = tiny_checkpoint()
    reference = load_pretrained(directory)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(xlm.checkpoint.torch, "load", spy)
    assert same_weights(load_pretrained(directory), reference)
    assert calls == [True]


# --- Bad checkpoints: a project exception that names the problem ----------------------------------------------


def test_a_truncated_safetensors_file(tiny_checkpoint):
    directory = tiny_checkpoint()
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors: .*\(truncated or not a safetensors"):
        load_pretrained(directory)


def test_a_missing_tensor(tiny_checkpoint):
    directory = tiny_checkpoint()
    rewrite_weights(directory, lambda state: state.pop("transformer.ffns.1.lin2.bias"))
    with pytest.raises(
        CheckpointError, match=r"checkpoint lacks 1 tensor\(s\) the config needs, first: blocks\.1\.ffn"
    ):
        load_pretrained(directory)


def test_a_tensor_of_the_wrong_shape(tiny_checkpoint):
    directory = tiny_checkpoint()

    def widen(state):
        state["transformer.attentions.0.q_lin.weight"] = torch.zeros(16, 17)

    rewrite_weights(directory, widen)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attention\.q_lin\.weight has shape \(16, 17\), the config"):
        load_pretrained(directory)


def test_an_unexpected_tensor(tiny_checkpoint):
    directory = tiny_checkpoint()
    rewrite_weights(directory, lambda state: state.update({"transformer.encoder_attn.0.q_lin.weight": torch.zeros(1)}))
    with pytest.raises(
        CheckpointError,
        match=r"unexpected tensor 'transformer\.encoder_attn\.0\.q_lin\.weight': not part of an XLM language model",
    ):
        load_pretrained(directory)


# --- One name, one tensor: aliases and shards that disagree with their index are refused, naming the keys -------


@pytest.mark.parametrize(
    "alias",
    ["embeddings.weight", "module.embeddings.weight", "module.transformer.embeddings.weight"],
    ids=["unprefixed", "ddp", "ddp-prefixed"],
)
def test_two_names_for_one_tensor_are_refused(tiny_checkpoint, alias):
    """`transformer.embeddings.weight` and an alias with other values: no silent choice of the last one."""
    directory = tiny_checkpoint()

    def add_alias(state):
        state[alias] = state["transformer.embeddings.weight"] + 1.0

    rewrite_weights(directory, add_alias)
    message = f"has both '{alias}' and 'transformer.embeddings.weight': two tensors for 'embeddings.weight'"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_pretrained(directory)


def test_two_names_are_refused_even_for_equal_values(tiny_checkpoint):
    directory = tiny_checkpoint()
    rewrite_weights(directory, lambda s: s.update({"module.pred_layer.proj.bias": s["pred_layer.proj.bias"].clone()}))
    with pytest.raises(
        CheckpointError, match=re.escape("both 'module.pred_layer.proj.bias' and 'pred_layer.proj.bias'")
    ):
        load_pretrained(directory)


def test_a_tensor_in_two_shards_is_refused(tiny_checkpoint):
    directory = tiny_checkpoint()
    shard(directory, extra={SHARDS[1]: [FIRST]})  # also in the shard its index does not name
    with pytest.raises(
        CheckpointError, match=rf"'pred_layer\.proj\.bias' is in shard {SHARDS[1]}, but .* names {SHARDS[0]}"
    ):
        load_pretrained(directory)


def test_a_tensor_the_index_does_not_list_is_refused(tiny_checkpoint):
    directory = tiny_checkpoint()
    shard(directory, weight_map_change=lambda weight_map: weight_map.pop(FIRST))
    with pytest.raises(CheckpointError, match=r"'pred_layer\.proj\.bias' is in shard .*, but .* does not list"):
        load_pretrained(directory)


def test_a_tensor_the_index_places_in_the_wrong_shard_is_refused(tiny_checkpoint):
    directory = tiny_checkpoint()

    def move(weight_map):
        weight_map[FIRST] = SHARDS[1]  # it is in SHARDS[0]

    shard(directory, weight_map_change=move)
    with pytest.raises(
        CheckpointError, match=rf"'pred_layer\.proj\.bias' is in shard {SHARDS[0]}, but .* names {SHARDS[1]}"
    ):
        load_pretrained(directory)


def test_a_tensor_listed_but_absent_is_refused(tiny_checkpoint):
    directory = tiny_checkpoint()
    shard(directory, weight_map_change=lambda weight_map: weight_map.update({"transformer.ghost.weight": SHARDS[0]}))
    with pytest.raises(CheckpointError, match=rf"lists 'transformer\.ghost\.weight' in {SHARDS[0]}, which lacks it"):
        load_pretrained(directory)


@pytest.mark.parametrize("outside", ["../model.safetensors", "/etc/passwd", "sub/model.safetensors"])
def test_an_index_naming_a_file_outside_its_directory_is_refused(tiny_checkpoint, outside):
    """A shard must sit beside its index: `../` would read any file the loader can reach."""
    directory = tiny_checkpoint()
    shard(directory, weight_map_change=lambda weight_map: weight_map.update({"transformer.x": outside}))
    with pytest.raises(CheckpointError, match="a shard must be a file beside the index"):
        load_pretrained(directory)


def test_a_config_asking_for_adaptive_softmax(tiny_checkpoint):
    directory = tiny_checkpoint()
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "asm": True}))
    with pytest.raises(ConfigError, match=r"config\.json: config has asm=True: an adaptive-softmax output layer"):
        load_pretrained(directory)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_is_not_plain_weights(tiny_checkpoint, tmp_path):
    directory = tiny_checkpoint()
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({**state, "hook": RunsCode(marker)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"not plain weights: it asks the unpickler for posix\.system; refusing"):
        load_pretrained(directory)
    assert not marker.exists()
    torch.save(list(state.values()), directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a flat state dict of tensors"):
        load_pretrained(directory)


def test_a_missing_local_path_that_is_no_hub_id(no_network):
    with pytest.raises(
        CheckpointError, match="no checkpoint at /no/such/checkpoint: no such file or directory, and not a hub id"
    ):
        load_pretrained("/no/such/checkpoint")


# --- The key table at full size -------------------------------------------------------------------------------


def test_key_table_covers_transformers_full_size_state_dict():
    """Every key of transformers' xlm-clm-enfr-1024 maps to ours or is dropped on purpose, and every one of ours
    is covered; built on the meta device, so no memory is used."""
    transformers = import_transformers()
    config = PRESETS["xlm-clm-enfr-1024"]
    with torch.device("meta"):
        theirs = transformers.XLMWithLMHeadModel(transformers.XLMConfig(**config.to_hf_config()))
        ours = XLM(config)
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert len(their_state) == 5 + 16 * config.n_layers + 2  # embeddings and their norm, 6 blocks, the head
    mapped = {key: map_key(key) for key in their_state}
    assert set(mapped.values()) - {None} == set(our_state)
    assert [key for key, name in mapped.items() if name is None] == ["pred_layer.proj.weight"]  # tied
    for key, name in mapped.items():
        if name is not None:
            assert their_state[key].shape == our_state[name].shape, key


@pytest.mark.parametrize("damage", ["truncated", "not-a-pickle"])
def test_a_damaged_pytorch_model_bin(tiny_checkpoint, damage):
    directory = tiny_checkpoint()
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    weights = directory / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>a login page</html>")
    message = "failed finding central directory" if damage == "truncated" else "not a PyTorch checkpoint"
    with pytest.raises(CheckpointError, match=rf"cannot read .*pytorch_model\.bin: .*{message}"):
        load_pretrained(directory)


def test_loading_initialises_nothing_and_restores_the_initialisers(tiny_checkpoint, monkeypatch):
    """The meta-device build skips `normal_` (its meta kernel is Python that costs a fresh process ~1 s and
    ~75 MB to import) and puts it back afterwards, also when loading fails."""
    path = tiny_checkpoint()
    calls = []
    monkeypatch.setattr(torch.Tensor, "normal_", lambda self, *a, **k: calls.append(self.device) or self)
    normal = torch.nn.init.normal_
    load_pretrained(path)
    assert calls == [] and torch.nn.init.normal_ is normal
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError):
        load_pretrained(path)
    assert torch.nn.init.normal_ is normal
