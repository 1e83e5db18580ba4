"""XLM hyper-parameters: a frozen dataclass, presets for the ten public checkpoints, a strict config.json reader.

Every public XLM checkpoint has the same architecture, varying only in size, vocabulary and languages, so the
config is small. The things transformers' `XLMConfig` can switch (adaptive softmax, sinusoidal positions, ReLU,
decoder mode, untied head) were never used by a published checkpoint: `from_hf_config` rejects them rather than
branching for them in the model.

`causal` is not in the config. In the original code it is an argument of every forward call (CLM training calls
`fwd(..., causal=True)`), so the same weights can be run either way. The config records the training `objective`
instead, from which callers pick the default (`causal=True` for a CLM).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from xlm.errors import ConfigError

Objective = Literal["clm", "mlm"]


@dataclass(frozen=True)
class XLMConfig:
    vocab_size: int  # V: BPE pieces plus 14 specials (<s> </s> <pad> <unk> <special0..9>)
    dim: int  # C: model width (transformers: emb_dim)
    n_layers: int
    n_heads: int  # H; the head width D is dim // n_heads
    languages: tuple[str, ...]  # language names in id order (transformers: id2lang)
    use_lang_emb: bool = True  # False for xlm-mlm-17/100-1280: trained without language embeddings
    objective: Objective | None = None  # how the weights were trained; None when a config cannot tell
    max_positions: int = 512  # learned absolute positions (original: N_MAX_POSITIONS)
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1  # residual and embedding dropout (training only)
    attention_dropout: float = 0.1  # dropout on the attention weights (training only)
    bos_id: int = 0  # <s>
    eos_id: int = 1  # </s>; the original code also uses it as BOS ("<EOS> for <BOS> everywhere")
    pad_id: int = 2  # <pad>: never attended to
    unk_id: int = 3  # <unk>
    mask_id: int = 5  # <special1>: the MLM mask token

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def head_dim(self) -> int:  # D
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:  # XLM fixes the FFN width at 4 * dim (original: hidden_dim = 4 * emb_dim)
        return 4 * self.dim

    @property
    def n_langs(self) -> int:
        return len(self.languages)

    @property
    def has_lang_embeddings(self) -> bool:
        """A language table exists only for several languages and `use_lang_emb` (original transformer.py)."""
        return self.n_langs > 1 and self.use_lang_emb

    @property
    def lang2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.languages)}

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> XLMConfig:
        """A preset by its exact hub name (`xlm-clm-enfr-1024` or `FacebookAI/xlm-clm-enfr-1024`)."""
        key = name.removeprefix("FacebookAI/")
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return replace(PRESETS[key], **overrides)

    def to_hf_config(self) -> dict[str, Any]:
        """The transformers `config.json` fields that describe this architecture (for save_pretrained)."""
        return {
            "model_type": "xlm",
            "architectures": ["XLMWithLMHeadModel"],
            "vocab_size": self.vocab_size,
            "emb_dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_langs": self.n_langs,
            "use_lang_emb": self.use_lang_emb,
            "id2lang": {str(i): name for i, name in enumerate(self.languages)},
            "lang2id": self.lang2id,
            "max_position_embeddings": self.max_positions,
            "layer_norm_eps": self.layer_norm_eps,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "embed_init_std": self.dim**-0.5,
            "causal": False,  # as on the hub; ours takes causal per call
            "gelu_activation": True,
            "sinusoidal_embeddings": False,
            "asm": False,
            "is_encoder": True,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "unk_index": self.unk_id,
            "mask_index": self.mask_id,
            "mask_token_id": 0,
            "lang_id": 0,
            "tie_word_embeddings": True,
        }


# --- Validation: every field, with its allowed values --------------------------------------------------------

MAX_LAYERS = 1000  # the largest XLM has 16; a bound keeps a corrupt config from building a million modules
MAX_LANGUAGES = 10_000  # the largest has 100


class ConfigFieldError(ConfigError):
    """A field outside its allowed values; `from_hf_config` restates it under its config.json name."""

    def __init__(self, field: str, value: Any, allowed: str):
        super().__init__(f"config {field}={value!r} is not allowed: it must be {allowed}")
        self.field, self.value, self.allowed = field, value, allowed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _require(config: XLMConfig, field: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigFieldError(field, getattr(config, field), allowed)


def _validate(c: XLMConfig) -> None:
    """Every field's type and range, in an order where each check can rely on the ones before it."""
    _require(c, "vocab_size", _is_int(c.vocab_size) and c.vocab_size >= 1, "an integer >= 1")
    _require(c, "dim", _is_int(c.dim) and c.dim >= 1, "an integer >= 1")
    _require(c, "n_layers", _is_int(c.n_layers) and 1 <= c.n_layers <= MAX_LAYERS, f"an integer in 1..{MAX_LAYERS}")
    _require(c, "n_heads", _is_int(c.n_heads) and c.n_heads >= 1, "an integer >= 1")
    _require(c, "n_heads", c.dim % c.n_heads == 0, f"a divisor of dim={c.dim}")
    names_ok = isinstance(c.languages, tuple) and all(isinstance(n, str) and n for n in c.languages)
    _require(c, "languages", names_ok and 1 <= len(c.languages) <= MAX_LANGUAGES, "1 or more non-empty names")
    _require(c, "languages", len(set(c.languages)) == len(c.languages), "distinct names")
    _require(c, "use_lang_emb", isinstance(c.use_lang_emb, bool), "true or false")
    _require(c, "objective", c.objective in (None, "clm", "mlm"), "'clm', 'mlm' or None")
    _require(c, "max_positions", _is_int(c.max_positions) and c.max_positions >= 1, "an integer >= 1")
    _require(c, "layer_norm_eps", _is_number(c.layer_norm_eps) and c.layer_norm_eps > 0, "a finite number > 0")
    for field in ("dropout", "attention_dropout"):
        value = getattr(c, field)
        _require(c, field, _is_number(value) and 0 <= value < 1, "a number in [0, 1)")
    for field in ("bos_id", "eos_id", "pad_id", "unk_id", "mask_id"):
        value = getattr(c, field)
        _require(c, field, _is_int(value) and 0 <= value < c.vocab_size, f"a token id in 0..{c.vocab_size - 1}")


# --- Presets ------------------------------------------------------------------------------------------------
# Values from each checkpoint's config.json on the Hugging Face hub (https://huggingface.co/FacebookAI/<name>,
# main branch), cross-checked against the original training `params` where the config embeds them (17/100) and
# against PaddleNLP's mirror (paddlenlp/transformers/xlm/configuration.py). The objective is the model's name:
# "mlm"/"clm" is how facebookresearch/XLM trained it; "tlm" models were trained with MLM + TLM, both masked.

_ENFR = ("en", "fr")
_ENDE = ("de", "en")
_XNLI15 = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
_LANGS17 = ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sv", "tr", "vi", "zh")
_LANGS100 = (
    "af als am an ang ar arz ast az bar be bg bn br bs ca ceb ckb cs cy da de el en eo es et eu fa fi fr fy ga "
    "gan gl gu he hi hr hu hy ia id is it ja jv ka kk kn ko ku la lb lt lv mk ml mn mr ms my nds ne nl nn no "
    "oc pl pt ro ru scn sco sh si simple sk sl sq sr sv sw ta te th tl tr tt uk ur uz vi war wuu yi zh "
    "zh_classical zh_min_nan zh_yue"
).split()

PRESETS: dict[str, XLMConfig] = {
    # English MLM; a single language, so no language table.
    "xlm-mlm-en-2048": XLMConfig(30145, 2048, 12, 16, ("en",), objective="mlm"),
    # English-German, English-French, English-Romanian MLMs (the unsupervised MT encoders of the paper).
    "xlm-mlm-ende-1024": XLMConfig(64699, 1024, 6, 8, _ENDE, objective="mlm"),
    "xlm-mlm-enfr-1024": XLMConfig(64139, 1024, 6, 8, _ENFR, objective="mlm"),
    "xlm-mlm-enro-1024": XLMConfig(64592, 1024, 6, 8, ("en", "ro"), objective="mlm"),
    # XNLI-15: MLM, and MLM + TLM (translation language modelling, still masked).
    "xlm-mlm-xnli15-1024": XLMConfig(95000, 1024, 12, 8, _XNLI15, objective="mlm"),
    "xlm-mlm-tlm-xnli15-1024": XLMConfig(95000, 1024, 12, 8, _XNLI15, objective="mlm"),
    # The causal LMs: uploaded to the hub in 2019, never linked from the XLM README. The hub config says
    # `causal: false`, so transformers runs them bidirectionally unless told otherwise.
    "xlm-clm-enfr-1024": XLMConfig(64139, 1024, 6, 8, _ENFR, objective="clm"),
    "xlm-clm-ende-1024": XLMConfig(64699, 1024, 6, 8, _ENDE, objective="clm"),
    # 17 and 100 Wikipedia languages, trained without language embeddings (`use_lang_emb: false`).
    "xlm-mlm-17-1280": XLMConfig(200000, 1280, 16, 16, _LANGS17, use_lang_emb=False, objective="mlm"),
    "xlm-mlm-100-1280": XLMConfig(200000, 1280, 16, 16, tuple(_LANGS100), use_lang_emb=False, objective="mlm"),
}


# --- Reading transformers' config.json ----------------------------------------------------------------------

# Keys whose value selects a feature that no public checkpoint uses and this model does not implement:
# (key, the only accepted value, what the other value would mean).
_REQUIRED_VALUES: tuple[tuple[str, Any, str], ...] = (
    ("asm", False, "an adaptive-softmax output layer"),
    ("sinusoidal_embeddings", False, "fixed sinusoidal position embeddings"),
    ("gelu_activation", True, "a ReLU feed-forward"),
    ("is_encoder", True, "a decoder with cross-attention"),
    ("share_inout_emb", True, "an output projection not tied to the word embeddings"),
    ("tie_word_embeddings", True, "an output projection not tied to the word embeddings"),
    ("use_memory", False, "product-key memory layers"),
    ("model_type", "xlm", "another architecture"),
)

# Old names that transformers' `attribute_map` still accepts, mapped to the current key.
_ALIASES = {
    "n_words": "vocab_size",
    "hidden_size": "emb_dim",
    "num_attention_heads": "n_heads",
    "num_hidden_layers": "n_layers",
    "bos_index": "bos_token_id",
    "eos_index": "eos_token_id",
    "pad_index": "pad_token_id",
}


def from_hf_config(
    hf: dict[str, Any] | str | Path, *, name: str | None = None, objective: Objective | None = None
) -> XLMConfig:
    """Read a transformers XLM `config.json` (a dict or a path), rejecting what the model does not implement.

    Both the 2019 keys (`n_words`, `bos_index`, ...) and the current ones are read; when both are present they
    must agree. Keys that do not change the forward pass (training `params`, summary heads, `causal`) are
    ignored. The objective is `objective` if given, else the preset of that `name` (hub id or directory name),
    else the training steps recorded in the config (`clm_steps`/`mlm_steps`, kept by xlm-mlm-17/100), else None.
    """
    if not isinstance(hf, dict):
        hf = _read_json(Path(hf))
    values = _canonical_keys(hf)
    for key, accepted, meaning in _REQUIRED_VALUES:
        if key in values and values[key] != accepted:
            raise ConfigError(f"config has {key}={values[key]!r}: {meaning} is not supported")
    if values.get("emb_dim") is None or values.get("n_layers") is None or values.get("n_heads") is None:
        raise ConfigError("config lacks emb_dim, n_layers or n_heads: not an XLM config")
    if "hidden_dim" in values and values["hidden_dim"] != 4 * values["emb_dim"]:
        raise ConfigError(f"hidden_dim {values['hidden_dim']} is not 4 * emb_dim: not an XLM FFN")
    fields = {
        "vocab_size": values.get("vocab_size", 30145),
        "dim": values["emb_dim"],
        "n_layers": values["n_layers"],
        "n_heads": values["n_heads"],
        "languages": _languages(values),
        "use_lang_emb": values.get("use_lang_emb", True),
        "objective": objective or _objective(values, name),
        "max_positions": values.get("max_position_embeddings", 512),
        "layer_norm_eps": values.get("layer_norm_eps", 1e-12),
        "dropout": values.get("dropout", 0.1),
        "attention_dropout": values.get("attention_dropout", 0.1),
        "bos_id": values.get("bos_token_id", 0),
        "eos_id": values.get("eos_token_id", 1),
        "pad_id": values.get("pad_token_id", 2),
        "unk_id": values.get("unk_index", 3),
        "mask_id": values.get("mask_index", 5),
    }
    try:
        return XLMConfig(**fields)
    except ConfigFieldError as err:  # restated under the name config.json uses
        raise ConfigFieldError(_HF_NAMES.get(err.field, err.field), err.value, err.allowed) from None


# XLMConfig's field -> the config.json key it is read from, where the two differ.
_HF_NAMES = {
    "dim": "emb_dim", "languages": "lang2id/id2lang", "max_positions": "max_position_embeddings",
    "bos_id": "bos_token_id", "eos_id": "eos_token_id", "pad_id": "pad_token_id", "unk_id": "unk_index",
    "mask_id": "mask_index",
}  # fmt: skip


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file():  # a directory, or a FIFO that a read would wait on forever
            raise ConfigError(f"cannot read config {path}: not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise ConfigError(f"cannot read config {path}: nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} is not a JSON object")
    return data


def _canonical_keys(hf: dict[str, Any]) -> dict[str, Any]:
    """Rename old keys to current ones; an old and a new key that disagree are an error, not a guess."""
    values = dict(hf)
    for old, new in _ALIASES.items():
        if old not in values:
            continue
        old_value = values.pop(old)
        if new in values and values[new] != old_value:
            raise ConfigError(f"config has {old}={old_value!r} but {new}={values[new]!r}")
        values[new] = old_value
    return values


def _languages(values: dict[str, Any]) -> tuple[str, ...]:
    """Language names in id order, from `lang2id`/`id2lang`.

    A config that names none: one language is taken to be English (as transformers' tokenizer assumes, and as
    xlm-mlm-en-2048 is); several are called `lang0`, `lang1`, ...
    """
    n_langs = values.get("n_langs", 1)
    if not (_is_int(n_langs) and 1 <= n_langs <= MAX_LANGUAGES):
        raise ConfigError(f"config n_langs={n_langs!r} is not allowed: it must be an integer in 1..{MAX_LANGUAGES}")
    lang2id = _lang2id(values.get("lang2id"))
    id2lang = _id2lang(values.get("id2lang"))
    if lang2id is None and id2lang is not None:
        lang2id = {name: i for i, name in id2lang.items()}
    if lang2id is None:
        return ("en",) if n_langs == 1 else tuple(f"lang{i}" for i in range(n_langs))
    if id2lang is not None and id2lang != {i: n for n, i in lang2id.items()}:
        raise ConfigError("config's id2lang and lang2id disagree")
    if sorted(lang2id.values()) != list(range(n_langs)):
        raise ConfigError(f"config's lang2id {lang2id} does not number n_langs={n_langs} languages from 0")
    return tuple(sorted(lang2id, key=lang2id.__getitem__))


def _lang2id(value: Any) -> dict[str, int] | None:
    """`lang2id` as written: an object of language name -> integer id."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k and _is_int(i) for k, i in value.items()):
        raise ConfigError(f"config lang2id={value!r} is not allowed: it must be an object of name -> integer id")
    return value


def _id2lang(value: Any) -> dict[int, str] | None:
    """`id2lang` as written: an object whose keys are integer ids (JSON makes them strings) and values names."""
    if value is None:
        return None
    allowed = "an object of integer id -> name"
    if not isinstance(value, dict):
        raise ConfigError(f"config id2lang={value!r} is not allowed: it must be {allowed}")
    id2lang = {}
    for key, name in value.items():
        is_id = _is_int(key) or (isinstance(key, str) and key.isascii() and key.isdigit())
        if not is_id or not isinstance(name, str) or not name:
            raise ConfigError(f"config id2lang has {key!r}: {name!r}, not allowed: it must be {allowed}")
        id2lang[int(key)] = name
    return id2lang


def _objective(values: dict[str, Any], name: str | None) -> Objective | None:
    if name is not None:
        key = Path(name.rstrip("/")).name
        if key in PRESETS:
            return PRESETS[key].objective
    if values.get("clm_steps") or values.get("mlm_steps"):  # original training params, kept by 17/100
        return "mlm" if values.get("mlm_steps") else "clm"
    if values.get("causal") is True:  # nobody writes this for a masked LM
        return "clm"
    return None


__all__ = ["PRESETS", "Objective", "XLMConfig", "from_hf_config"]
