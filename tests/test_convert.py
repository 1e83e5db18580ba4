"""Original facebookresearch/XLM checkpoints (.pth) to transformers' layout, built here as the trainer saves them.

`save_original` writes what `Trainer.save_checkpoint` (xlm/trainer.py) writes: the state dict under `model` with
the original key names (DDP's `module.` prefix optional, the tied head stored as a second name for the embeddings),
`params` as `vars(params)` after the trainer has run (tensors, numpy arrays, tuples in it), the dictionary, training
state with numpy floats, and an optimizer state. The weights are a seeded random transformers model, the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_ids
from safetensors.torch import load_file

import xlm.convert
from xlm.checkpoint import load_pretrained
from xlm.config import XLMConfig
from xlm.convert import convert_original, main, tokenizer_config
from xlm.errors import CheckpointError, ConfigError
from xlm.inputs import SPECIAL_TOKENS
from xlm.parity import load_transformers_model
from xlm.synthetic import hf_model_from_config, import_transformers

# A tiny fastBPE vocabulary by decreasing frequency (`@@`: the piece does not end a word), and codes it came from.
WORDS = ["the", ",", "le", "cat", "chat", "la", "un@@", "é@@", "t", "é", "believ@@", "able", "d@@", "o@@", "g"]
CODES = b"t h 100\nth e</w> 90\nc a 80\nca t</w> 70\nl e</w> 60\nc h 50\nch a 40\ncha t</w> 30\nl a</w> 20\n"
LANGS = ("en", "fr")


class RunsCode:
    """An object whose unpickling would run a shell command (what a plain torch.load does for any such file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def trainer_params(n_words: int, counts: list[int], changes: dict) -> dict:
    """`params` as the trainer leaves it: the command line, derived values, a tensor and a numpy array."""
    params = {
        "dump_path": "/checkpoint/xlm/dumped/clm_enfr/1a2b3c", "exp_name": "clm_enfr", "exp_id": "1a2b3c",
        "command": "python train.py --exp_name clm_enfr --emb_dim 32 --n_layers 2 --n_heads 4", "save_periodic": 0,
        "fp16": False, "amp": -1, "encoder_only": True, "emb_dim": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.1,
        "attention_dropout": 0.1, "gelu_activation": True, "share_inout_emb": True, "sinusoidal_embeddings": False,
        "use_lang_emb": True, "use_memory": False, "asm": False, "context_size": 0, "word_pred": 0.15,
        "sample_alpha": 0.5, "word_mask_keep_rand": "0.8,0.1,0.1", "data_path": "/data/enfr/processed", "lgs": "en-fr",
        "max_vocab": -1, "min_count": 0, "bptt": 256, "batch_size": 32, "tokens_per_batch": -1,
        "optimizer": "adam_inverse_sqrt,beta1=0.9,beta2=0.98,lr=0.0001", "clip_grad_norm": 5, "epoch_size": 300000,
        "stopping_criterion": "_valid_en_fr_clm_ppl,25", "validation_metrics": "_valid_en_fr_clm_ppl",
        "lambda_clm": "1", "lambda_clm_config": None, "clm_steps": [["en", None], ["fr", None]], "mlm_steps": [],
        "bt_steps": [], "mt_steps": [], "ae_steps": [], "pc_steps": [], "reload_model": "", "beam_size": 1,
        "langs": list(LANGS), "id2lang": dict(enumerate(LANGS)), "lang2id": {lang: i for i, lang in enumerate(LANGS)},
        "n_langs": 2, "mono_dataset": {"en": {"train": "/data/train.en.pth"}, "fr": {"train": "/data/train.fr.pth"}},
        "para_dataset": {("en", "fr"): {"valid": ("/data/valid.en-fr.en.pth", "/data/valid.en-fr.fr.pth")}},
        "n_words": n_words, "bos_index": 0, "eos_index": 1, "pad_index": 2, "unk_index": 3, "mask_index": 5,
        "is_master": True, "multi_gpu": False, "world_size": 1, "local_rank": 0, "global_rank": 0,
        "pred_probs": torch.FloatTensor([0.8, 0.1, 0.1]),
        "mask_scores": np.maximum(np.array(counts), 1) ** -0.5,
    }  # fmt: skip
    params.update(changes)
    return params


def save_original(
    path: Path, *, seed: int = 0, prefix: str = "", key: str = "model", legacy: bool = False, words=WORDS,
    head_offset: float = 0.0, **param_changes,
):  # fmt: skip
    """Write an original checkpoint at `path`; returns the transformers model whose weights it holds."""
    id2word = dict(enumerate([*SPECIAL_TOKENS, *words]))
    counts = {word: (0 if i < len(SPECIAL_TOKENS) else 1000 - i) for i, word in id2word.items()}
    config = XLMConfig(len(id2word), 32, 2, 4, LANGS)
    reference = hf_model_from_config(config, seed)
    state = {f"{prefix}{k.removeprefix('transformer.')}": v for k, v in reference.state_dict().items()}
    if head_offset:
        state[f"{prefix}pred_layer.proj.weight"] = state[f"{prefix}pred_layer.proj.weight"] + head_offset
    checkpoint = {
        "epoch": 12, "n_total_iter": 3_600_000, "best_metrics": {"valid_en_fr_clm_ppl": np.float64(23.4)},
        "best_stopping_criterion": np.float64(-23.4), key: state,
        f"{key}_optimizer": {"state": {0: {"step": 10, "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
        "dico_id2word": id2word, "dico_word2id": {w: i for i, w in id2word.items()}, "dico_counts": counts,
        "params": trainer_params(len(id2word), list(counts.values()), param_changes),
    }  # fmt: skip
    if key == "encoder":
        checkpoint["decoder"] = {"decoder_only.weight": torch.zeros(2)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return reference


@pytest.fixture
def original(tmp_path):
    """An original checkpoint and its codes file; returns (checkpoint path, codes path, reference model)."""
    codes = tmp_path / "codes_enfr"
    codes.write_bytes(CODES)
    path = tmp_path / "clm_enfr.pth"
    return path, codes, save_original(path)


def logits_of(model, input_ids, langs, causal):
    with torch.no_grad():
        if hasattr(model, "transformer"):
            model.transformer.causal = causal
            return model(input_ids=input_ids, langs=langs).logits
        return model(input_ids, langs, causal=causal)


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "ddp"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_converted_checkpoint_loads_in_transformers_and_xlm_alike(tmp_path, original, prefix, legacy):
    path, codes, _ = original
    reference = save_original(path, prefix=prefix, legacy=legacy)
    out = convert_original(path, codes, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip
    ours, theirs = load_pretrained(out), load_transformers_model(out)
    assert ours.config.objective == "clm"  # from the params' clm_steps, kept in config.json
    input_ids = random_ids(ours.config.vocab_size, (2, 9))
    langs = torch.tensor([[0], [1]]).expand(2, 9)
    for causal in (False, True):
        expected = logits_of(reference, input_ids, langs, causal)
        assert torch.equal(logits_of(theirs, input_ids, langs, causal), expected)  # the same weights in transformers
        torch.testing.assert_close(logits_of(ours, input_ids, langs, causal), expected, rtol=0, atol=1e-5)


def test_vocabulary_maps_back_to_the_dictionary(original, tmp_path):
    path, codes, _ = original
    out = convert_original(path, codes, tmp_path / "converted")
    vocab = import_transformers().XLMTokenizer.from_pretrained(out).get_vocab()
    id2word = torch.load(path, weights_only=False)["dico_id2word"]  # our own test file: safe to unpickle
    assert len(vocab) == len(id2word)
    for piece, i in vocab.items():
        word = piece.removesuffix("</w>") if piece.endswith("</w>") else piece + "@@" if i > 13 else piece
        assert id2word[i] == word


def test_tokenizer_files_work_with_transformers(original, tmp_path):
    path, codes, _ = original
    out = convert_original(path, codes, tmp_path / "converted")
    assert (out / "merges.txt").read_bytes() == CODES
    tokenizer = import_transformers().XLMTokenizer.from_pretrained(out)
    assert tokenizer.lang2id == {"en": 0, "fr": 1} and tokenizer.do_lowercase_and_remove_accent
    word2id = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *WORDS])}
    assert tokenizer.encode("The cat") == [0, word2id["the"], word2id["cat"], 1]  # merged by merges.txt


def test_lowercasing_follows_the_vocabulary():
    config = XLMConfig(20, 8, 1, 2, LANGS)
    assert tokenizer_config(config, {"the</w>": 14, "chat</w>": 15})["do_lowercase_and_remove_accent"]
    assert not tokenizer_config(config, {"The</w>": 14, "chat</w>": 15})["do_lowercase_and_remove_accent"]


def test_translation_checkpoints_use_the_encoder(tmp_path, original):
    path, codes, _ = original
    reference = save_original(path, key="encoder", seed=3)
    out = convert_original(path, codes, tmp_path / "converted")
    assert torch.equal(load_pretrained(out).embeddings.weight, reference.transformer.embeddings.weight)


def test_numpy_1_pickles_load(tmp_path, original):
    """Files from 2019 name numpy's classes `numpy.core.*` (numpy 2 says `numpy._core.*`)."""
    path, codes, _ = original
    save_original(path, legacy=True)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    out = convert_original(path, codes, tmp_path / "converted")
    assert load_pretrained(out).config.vocab_size == len(SPECIAL_TOKENS) + len(WORDS)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, original, legacy):
    path, codes, _ = original
    marker = tmp_path / "code-ran"
    save_original(path, legacy=legacy, hook=RunsCode(marker))
    with pytest.raises(CheckpointError, match=r"not plain weights: it asks the unpickler for posix\.system; refusing"):
        convert_original(path, codes, tmp_path / "converted")
    assert not marker.exists() and not (tmp_path / "converted").exists()


def test_params_saved_as_an_object_are_refused(tmp_path, original):
    path, codes, _ = original
    checkpoint = torch.load(path, weights_only=False)  # our own test file
    checkpoint["params"] = argparse.Namespace(**checkpoint["params"])
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"asks the unpickler for argparse\.Namespace"):
        convert_original(path, codes, tmp_path / "converted")


def test_a_head_that_differs_from_the_embeddings_is_reported(tmp_path, original):
    path, codes, _ = original
    save_original(path, head_offset=1e-3)
    with pytest.raises(CheckpointError, match=r"stores pred_layer\.proj\.weight different from the word embeddings"):
        convert_original(path, codes, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"asm": True}, ConfigError, "asm=True: an adaptive-softmax output layer is not supported"),
        ({"gelu_activation": False}, ConfigError, "gelu_activation=False: a ReLU feed-forward"),
        ({"use_memory": True}, ConfigError, "use_memory=True: product-key memory layers"),
        ({"n_words": 99}, ConfigError, "params says n_words=99, but the dictionary has 29 words"),
        ({"emb_dim": 64}, CheckpointError, r"embeddings\.weight has shape \(512, 32\), the config implies \(512, 64\)"),
    ],
)
def test_unsupported_or_inconsistent_params_are_rejected(tmp_path, original, changes, error, message):
    path, codes, _ = original
    save_original(path, **changes)
    with pytest.raises(error, match=message):
        convert_original(path, codes, tmp_path / "converted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clm_enfr.pth", "codes_enfr"]  # no output, no temp dir


def test_missing_params_are_named(tmp_path, original):
    path, codes, _ = original
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["params"]["emb_dim"], checkpoint["params"]["asm"]
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match="params lacks emb_dim, asm: not the params of a facebookresearch/XLM"):
        convert_original(path, codes, tmp_path / "converted")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["un@@", "un"], None),  # different pieces: `un` and `un</w>`
        (["a@@b", "ab@@"], None),  # only a final `@@` continues a word: `a@@b</w>` and `ab`
        (["ab", "ab</w>@@"], "dictionary words 'ab' and 'ab</w>@@' are both piece 'ab</w>'"),
    ],
)
def test_dictionary_words_become_distinct_pieces(tmp_path, original, words, message):
    path, codes, _ = original
    save_original(path, words=words)
    if message is None:
        assert len(load_pretrained(convert_original(path, codes, tmp_path / "out")).embeddings.weight) == 16
    else:
        with pytest.raises(CheckpointError, match=message):
            convert_original(path, codes, tmp_path / "out")


def test_codes_files_are_checked(tmp_path, original):
    path, codes, _ = original
    codes.write_bytes(CODES.rstrip(b"\n"))  # transformers would drop the last merge of this file
    out = convert_original(path, codes, tmp_path / "converted")
    assert (out / "merges.txt").read_bytes() == CODES
    codes.write_bytes(b"t h 100\nnot-a-merge\n")
    with pytest.raises(CheckpointError, match=r"codes_enfr:2 is not a fastBPE merge 'left right count'"):
        convert_original(path, codes, tmp_path / "converted", force=True)


def test_an_existing_output_is_replaced_only_with_force(tmp_path, original):
    path, codes, _ = original
    out = convert_original(path, codes, tmp_path / "converted")
    first = (out / "model.safetensors").read_bytes()
    save_original(path, seed=7)
    with pytest.raises(CheckpointError, match="converted already exists; pass --force to replace it"):
        convert_original(path, codes, out)
    assert (out / "model.safetensors").read_bytes() == first
    convert_original(path, codes, out, force=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clm_enfr.pth", "codes_enfr", "converted"]


def test_conversion_is_byte_stable_and_leaves_its_input_alone(tmp_path, original):
    path, codes, _ = original
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (path, codes)}
    first = convert_original(path, codes, tmp_path / "first")
    second = convert_original(path, codes, tmp_path / "second")
    for file in first.iterdir():
        assert file.read_bytes() == (second / file.name).read_bytes(), file.name
    assert before == {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (path, codes)}
    assert "pred_layer.proj.weight" not in load_file(first / "model.safetensors")


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_an_interrupted_conversion_leaves_nothing_under_the_final_name(tmp_path, original, monkeypatch, existing):
    path, codes, _ = original
    out = tmp_path / "converted"
    if existing:
        convert_original(path, codes, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if existing else None

    def interrupted_write(tensors, target):
        target.write_bytes(b"the first bytes of a safetensors file")
        raise KeyboardInterrupt

    monkeypatch.setattr(xlm.convert, "write_safetensors", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        convert_original(path, codes, out, force=existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clm_enfr.pth", "codes_enfr"] + (
        ["converted"] if existing else []
    )
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old directory, untouched


def test_convert_script(tmp_path, original, capsys):
    path, codes, _ = original
    out = tmp_path / "clm-enfr"
    assert main([str(path), "--codes", str(codes), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: 2 layers, dim 32, 29 words, languages en fr, objective clm\n"
    assert main([str(path), "--codes", str(codes), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"convert_original: error: {out} already exists; pass --force to replace it\n"
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--out", str(out)])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_xlm_convert_verb_through_a_subprocess(tmp_path, original):
    path, codes, _ = original
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = partial(subprocess.run, capture_output=True, text=True, env=env, timeout=300)
    out = tmp_path / "converted"
    result = run([sys.executable, "-m", "xlm", "convert", str(path), "--codes", str(codes), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert load_pretrained(out).config.objective == "clm"
    result = run([sys.executable, "-m", "xlm", "convert", str(tmp_path / "missing.pth"), "--codes", str(codes)])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("xlm convert: error: ")


def test_the_output_directory_gets_ordinary_permissions(tmp_path, original):
    """Not the 0700 of a private temporary directory: the directory is renamed into place as it was made."""
    path, codes, _ = original
    umask = os.umask(0o022)
    os.umask(umask)
    out = convert_original(path, codes, tmp_path / "converted")
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
