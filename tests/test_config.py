"""The presets and the strict reader of transformers' config.json."""

from __future__ import annotations

import json
import re

import pytest

from xlm.config import PRESETS, XLMConfig, from_hf_config
from xlm.errors import ConfigError

# xlm-clm-enfr-1024's config.json as first uploaded (2019-07-10): old key names, no `causal`.
ENFR_2019 = {
    "same_enc_dec": True, "emb_dim": 1024, "n_layers": 6, "n_heads": 8, "dropout": 0.1, "attention_dropout": 0.1,
    "gelu_activation": True, "share_inout_emb": True, "sinusoidal_embeddings": False, "asm": False, "max_vocab": -1,
    "min_count": 0, "id2lang": {"0": "en", "1": "fr"}, "lang2id": {"en": 0, "fr": 1}, "n_langs": 2, "n_words": 64139,
}  # fmt: skip
# The same config as re-saved on 2020-04-24 (commit 71a65ec): current names, `causal: false`.
ENFR_2020 = {
    "architectures": ["XLMWithLMHeadModel"], "asm": False, "attention_dropout": 0.1, "bos_index": 0,
    "bos_token_id": 0, "causal": False, "dropout": 0.1, "emb_dim": 1024, "embed_init_std": 0.02209708691207961,
    "end_n_top": 5, "eos_index": 1, "gelu_activation": True, "id2lang": {"0": "en", "1": "fr"}, "init_std": 0.02,
    "is_encoder": True, "lang2id": {"en": 0, "fr": 1}, "lang_id": 0, "layer_norm_eps": 1e-12, "mask_index": 5,
    "mask_token_id": 0, "max_position_embeddings": 512, "max_vocab": -1, "min_count": 0, "model_type": "xlm",
    "n_heads": 8, "n_langs": 2, "n_layers": 6, "pad_index": 2, "pad_token_id": 2, "same_enc_dec": True,
    "share_inout_emb": True, "sinusoidal_embeddings": False, "start_n_top": 5, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "first", "summary_use_proj": True,
    "unk_index": 3, "use_lang_emb": True, "vocab_size": 64139,
}  # fmt: skip


def test_ten_presets_with_the_published_shapes():
    assert len(PRESETS) == 10
    enfr = XLMConfig.from_name("FacebookAI/xlm-clm-enfr-1024")
    assert (enfr.vocab_size, enfr.dim, enfr.n_layers, enfr.n_heads, enfr.ffn_dim, enfr.head_dim) == (
        64139, 1024, 6, 8, 4096, 128,
    )  # fmt: skip
    assert enfr.lang2id == {"en": 0, "fr": 1} and enfr.objective == "clm" and enfr.has_lang_embeddings
    assert PRESETS["xlm-mlm-100-1280"].lang2id["en"] == 23 and PRESETS["xlm-mlm-100-1280"].n_langs == 100
    assert PRESETS["xlm-mlm-17-1280"].lang2id["en"] == 2 and not PRESETS["xlm-mlm-17-1280"].has_lang_embeddings
    assert PRESETS["xlm-mlm-xnli15-1024"].lang2id["en"] == 4 and PRESETS["xlm-mlm-ende-1024"].lang2id["en"] == 1
    assert not PRESETS["xlm-mlm-en-2048"].has_lang_embeddings  # one language: no table
    assert [name for name, c in PRESETS.items() if c.objective == "clm"] == ["xlm-clm-enfr-1024", "xlm-clm-ende-1024"]


@pytest.mark.parametrize("hf", [ENFR_2019, ENFR_2020], ids=["2019-keys", "2020-keys"])
def test_hub_configs_of_both_eras_read_as_the_preset(hf):
    assert from_hf_config(hf, name="FacebookAI/xlm-clm-enfr-1024") == PRESETS["xlm-clm-enfr-1024"]


def test_config_from_a_path_and_objective_from_the_directory_name(tmp_path):
    directory = tmp_path / "xlm-mlm-enfr-1024"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(ENFR_2020))
    assert from_hf_config(directory / "config.json", name=str(directory)).objective == "mlm"
    assert from_hf_config(directory / "config.json").objective is None  # nothing says how it was trained
    assert from_hf_config(ENFR_2020, objective="clm").objective == "clm"


def test_objective_from_the_original_training_params():
    """xlm-mlm-17/100 configs embed the training command's params, which record the MLM steps."""
    params = {**ENFR_2020, "mlm_steps": "ar,de,en", "clm_steps": ""}
    assert from_hf_config(params).objective == "mlm"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("asm", True, "adaptive-softmax"),
        ("sinusoidal_embeddings", True, "sinusoidal"),
        ("gelu_activation", False, "ReLU"),
        ("is_encoder", False, "decoder"),
        ("share_inout_emb", False, "not tied"),
        ("use_memory", True, "product-key memory"),
        ("model_type", "bert", "another architecture"),
    ],
)
def test_unsupported_features_are_rejected_by_name(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        from_hf_config({**ENFR_2020, key: value})
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_words": 100}, "n_words=100 but vocab_size=64139"),
        ({"pad_index": 0}, "pad_index=0 but pad_token_id=2"),
        ({"n_heads": 7}, r"n_heads=7 is not allowed: it must be a divisor of dim=1024"),
        ({"lang2id": {"en": 0, "fr": 2}, "id2lang": {"0": "en", "2": "fr"}}, "does not number"),
        ({"id2lang": {"0": "fr", "1": "en"}}, "disagree"),
        ({"n_layers": "6"}, r"n_layers='6' is not allowed: it must be an integer in 1\.\.1000"),
        ({"layer_norm_eps": -1.0}, "layer_norm_eps"),
    ],
)
def test_inconsistent_configs_are_rejected(change, message):
    with pytest.raises(ConfigError, match=message):
        from_hf_config({**ENFR_2020, **change})


def test_not_an_xlm_config():
    with pytest.raises(ConfigError, match="not an XLM config"):
        from_hf_config({"hidden_act": "gelu"})


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        from_hf_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        from_hf_config(tmp_path / "config.json")


def test_languages_when_a_config_names_none():
    unnamed = {k: v for k, v in ENFR_2020.items() if k not in ("lang2id", "id2lang")}
    assert from_hf_config(unnamed).languages == ("lang0", "lang1")
    assert from_hf_config({**unnamed, "n_langs": 1}).languages == ("en",)


def test_to_hf_config_round_trips():
    for name, preset in PRESETS.items():
        assert from_hf_config(preset.to_hf_config(), name=name) == preset


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'xlm-clm-enfr-2048'; known: xlm-mlm-en-2048"):
        XLMConfig.from_name("xlm-clm-enfr-2048")


# --- Every field is checked: its config.json name and its allowed values are in the message ------------------

CURRENT_NAMES_ONLY = {k: v for k, v in ENFR_2020.items() if k not in ("bos_index", "eos_index", "pad_index")}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_heads", 0, "n_heads=0 is not allowed: it must be an integer >= 1"),
        ("n_heads", 3, "n_heads=3 is not allowed: it must be a divisor of dim=1024"),
        ("vocab_size", 0, "vocab_size=0 is not allowed: it must be an integer >= 1"),
        ("vocab_size", 1.5, "vocab_size=1.5 is not allowed: it must be an integer >= 1"),
        ("pad_token_id", 64139, "pad_token_id=64139 is not allowed: it must be a token id in 0..64138"),
        ("mask_index", -1, "mask_index=-1 is not allowed: it must be a token id in 0..64138"),
        ("bos_token_id", True, "bos_token_id=True is not allowed: it must be a token id in 0..64138"),
        ("emb_dim", 0, "emb_dim=0 is not allowed: it must be an integer >= 1"),
        ("n_layers", 10**9, "n_layers=1000000000 is not allowed: it must be an integer in 1..1000"),
        ("n_layers", 0, "n_layers=0 is not allowed: it must be an integer in 1..1000"),
        ("max_position_embeddings", 0, "max_position_embeddings=0 is not allowed: it must be an integer >= 1"),
        ("layer_norm_eps", "1e-12", "layer_norm_eps='1e-12' is not allowed: it must be a finite number > 0"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps=nan is not allowed: it must be a finite number > 0"),
        ("layer_norm_eps", 0, "layer_norm_eps=0 is not allowed: it must be a finite number > 0"),
        ("dropout", None, "dropout=None is not allowed: it must be a number in [0, 1)"),
        ("dropout", 1.5, "dropout=1.5 is not allowed: it must be a number in [0, 1)"),
        ("attention_dropout", -0.1, "attention_dropout=-0.1 is not allowed: it must be a number in [0, 1)"),
        ("use_lang_emb", "false", "use_lang_emb='false' is not allowed: it must be true or false"),
        ("n_langs", 0, "n_langs=0 is not allowed: it must be an integer in 1..10000"),
        ("lang2id", ["en", "fr"], "lang2id=['en', 'fr'] is not allowed: it must be an object of name -> integer id"),
        ("lang2id", {"en": "0", "fr": 1}, "lang2id={'en': '0', 'fr': 1} is not allowed"),
        (
            "id2lang",
            {"zero": "en", "1": "fr"},
            "id2lang has 'zero': 'en', not allowed: it must be an object of integer",
        ),
        ("id2lang", {"0": 7, "1": "fr"}, "id2lang has '0': 7, not allowed"),
        ("id2lang", ["en", "fr"], "id2lang=['en', 'fr'] is not allowed"),
    ],
)
def test_each_field_is_validated_with_its_name_and_allowed_values(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_hf_config({**CURRENT_NAMES_ONLY, key: value})


def test_fields_are_validated_when_a_config_is_built_in_python():
    with pytest.raises(ConfigError, match=re.escape("n_heads=0 is not allowed: it must be an integer >= 1")):
        XLMConfig(100, 32, 2, 0, ("en",))
    with pytest.raises(ConfigError, match=re.escape("pad_id=100 is not allowed: it must be a token id in 0..99")):
        XLMConfig(100, 32, 2, 4, ("en",), pad_id=100)


def test_config_files_that_are_not_json_objects_one_can_read(tmp_path):
    """A directory where the file should be, JSON nested past the parser's stack, a NaN: each one line."""
    (tmp_path / "dir" / "config.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"cannot read config .*config\.json: not a regular file"):
        from_hf_config(tmp_path / "dir" / "config.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        from_hf_config(tmp_path / "deep.json")
    (tmp_path / "nan.json").write_text(json.dumps({**CURRENT_NAMES_ONLY, "layer_norm_eps": float("nan")}))
    with pytest.raises(ConfigError, match="layer_norm_eps=nan is not allowed"):
        from_hf_config(tmp_path / "nan.json")
