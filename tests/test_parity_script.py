"""scripts/parity_check.py: the project's main job, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xlm.parity
from xlm.checkpoint import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "parity_check.py"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_default_synthetic_full_size_check_passes_offline(tmp_path):
    result = run_script("--synthetic", "xlm-clm-enfr-1024", "--json", str(tmp_path / "parity.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "causal off" in result.stdout and "causal on" in result.stdout and "layer 6" in result.stdout
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["ok"] is True and len(report["per_layer"]) == 7
    assert set(report["causal"]) == {"off", "on"}
    assert all(mode["max_abs_logits"] <= 1e-5 and mode["top1_agreement"] == 1.0 for mode in report["causal"].values())


def test_reference_attention_is_bit_exact(tiny_checkpoint, tmp_path, capsys):
    code = xlm.parity.main(
        ["--model", str(tiny_checkpoint()), "--attention", "reference", "--json", str(tmp_path / "r")]
    )
    report = json.loads((tmp_path / "r").read_text())
    assert code == 0 and report["max_abs_logits"] == 0.0 and report["per_layer"] == [0.0, 0.0, 0.0]


def test_a_perturbed_weight_fails_the_check(tiny_checkpoint, monkeypatch, tmp_path, capsys):
    def load_and_perturb(path, **kwargs):
        model = load_pretrained(path, **kwargs)
        with torch.no_grad():
            model.blocks[1].ffn.lin2.bias[3] += 1e-3  # one number in the last block
        return model

    monkeypatch.setattr(xlm.parity, "load_pretrained", load_and_perturb)
    args = ["--model", str(tiny_checkpoint()), "--causal", "on", "--attention", "reference"]
    code = xlm.parity.main([*args, "--json", str(tmp_path / "p.json")])
    report = json.loads((tmp_path / "p.json").read_text())
    assert code == 1 and report["ok"] is False
    assert report["per_layer"][:2] == [0.0, 0.0] and report["per_layer"][2] > 1e-4  # the table points at layer 2
    assert "NO" in capsys.readouterr().out


def test_one_mode_only(tiny_checkpoint, tmp_path, capsys):
    assert xlm.parity.main(["--model", str(tiny_checkpoint()), "--causal", "off", "--json", str(tmp_path / "o")]) == 0
    assert set(json.loads((tmp_path / "o").read_text())["causal"]) == {"off"}


def test_a_lone_weights_file_with_its_config_beside_it(tiny_checkpoint, capsys):
    assert xlm.parity.main(["--model", str(tiny_checkpoint() / "model.safetensors"), "--batch", "1"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "--batch must be >= 1"),
        (["--seq", "513"], "--seq in 1..512"),
        (["--synthetic", "xlm-clm-enfr-2048"], "invalid choice"),
        (["--model", "/nonexistent/checkpoint"], "no checkpoint at /nonexistent/checkpoint"),
        (["--causal", "sometimes"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run_script(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_checkpoint_exits_2(tiny_checkpoint):
    path = tiny_checkpoint()
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    result = run_script("--model", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "truncated" in result.stderr


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_is_judged_against_its_rounding(tiny_checkpoint, tmp_path, capsys, dtype):
    """Within 4 roundings of the largest logit (bf16: 4 x 2^-8 x ~7 = 0.11 here; measured 1.3-2.1 roundings),
    and the same top-1 tokens; not bitwise (8 or 11 significant bits)."""
    path = str(tiny_checkpoint())
    assert xlm.parity.main(["--model", path, "--dtype", dtype, "--json", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b").read_text())
    eps = {"bf16": 2**-7, "fp16": 2**-10}[dtype]
    for mode in report["causal"].values():
        assert 0 < mode["max_abs_logits"] <= mode["bound"] and mode["top1_agreement"] >= 0.99
        assert mode["bound"] == pytest.approx(4 * eps / 2 * 7, rel=0.15)  # the tiny model's logits reach ~7
    assert "within 4 roundings, top-1 >= 99%" in capsys.readouterr().out
    assert xlm.parity.main(["--model", path, "--dtype", dtype, "--min-top1", "1.01"]) == 1


def test_low_precision_fails_outside_its_rounding(tiny_checkpoint, monkeypatch, tmp_path, capsys):
    """A bf16 model that lost more than rounding (one weight off by 3%) fails, although its top-1 tokens hold."""

    def load_and_perturb(path, **kwargs):
        model = load_pretrained(path, **kwargs)
        with torch.no_grad():
            model.output_bias[20] += 0.03 * model.output_bias.abs().max() + 0.2
        return model

    monkeypatch.setattr(xlm.parity, "load_pretrained", load_and_perturb)
    args = ["--model", str(tiny_checkpoint()), "--dtype", "bf16", "--min-top1", "0.9"]
    assert xlm.parity.main([*args, "--json", str(tmp_path / "p")]) == 1
    report = json.loads((tmp_path / "p").read_text())
    assert all(mode["max_abs_logits"] > mode["bound"] for mode in report["causal"].values())


@pytest.mark.slow
def test_text_mode_on_the_real_enfr_tokenizer(full_size_checkpoint, enfr_tokenizer_dir, tmp_path, capsys):
    """`--text ... --lang fr`: our ids equal transformers' (French Moses rules), then the logits on them."""
    text = "C'est l'été à Montréal, et le chat est noir."
    args = ["--model", str(full_size_checkpoint), "--tokenizer", str(enfr_tokenizer_dir), "--text", text]
    assert xlm.parity.main([*args, "--lang", "fr", "--json", str(tmp_path / "t.json")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["text"]["ids_equal"] and report["text"]["ours"][0] == 0  # <s>: the transformers framing
    assert report["text"]["lang"] == "fr" and report["max_abs_logits"] <= 1e-5
    assert "identical to transformers' _tokenize(text, lang='fr')" in capsys.readouterr().out


def test_text_mode_fails_when_the_ids_differ(tiny_checkpoint, monkeypatch, tmp_path, capsys):
    from xlm.tokenizer import Tokenizer

    encode = Tokenizer.encode
    monkeypatch.setattr(Tokenizer, "encode", lambda self, text, lang: encode(self, text, lang)[:-1])  # drop </s>
    args = ["--model", str(tiny_checkpoint()), "--text", "Le chat.", "--lang", "fr", "--json", str(tmp_path / "t")]
    assert xlm.parity.main(args) == 1
    assert json.loads((tmp_path / "t").read_text())["text"]["ids_equal"] is False
    assert "ids DIFFER from transformers' from position" in capsys.readouterr().out
