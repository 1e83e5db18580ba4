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
        if self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if not self.languages:
            raise ConfigError("a config needs at least one language")
        if len(set(self.languages)) != len(self.languages):
            raise ConfigError(f"duplicate language names in {self.languages}")
        if self.objective not in (None, "clm", "mlm"):
            raise ConfigError(f"objective must be 'clm', 'mlm' or None, not {self.objective!r}")

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
    config = XLMConfig(
        vocab_size=_int(values, "vocab_size", 30145),
        dim=_int(values, "emb_dim"),
        n_layers=_int(values, "n_layers"),
        n_heads=_int(values, "n_heads"),
        languages=_languages(values),
        use_lang_emb=bool(values.get("use_lang_emb", True)),
        objective=objective or _objective(values, name),
        max_positions=_int(values, "max_position_embeddings", 512),
        layer_norm_eps=float(values.get("layer_norm_eps", 1e-12)),
        dropout=float(values.get("dropout", 0.1)),
        attention_dropout=float(values.get("attention_dropout", 0.1)),
        bos_id=_int(values, "bos_token_id", 0),
        eos_id=_int(values, "eos_token_id", 1),
        pad_id=_int(values, "pad_token_id", 2),
        unk_id=_int(values, "unk_index", 3),
        mask_id=_int(values, "mask_index", 5),
    )
    if not (math.isfinite(config.layer_norm_eps) and config.layer_norm_eps > 0):
        raise ConfigError(f"config layer_norm_eps={config.layer_norm_eps!r} is not a positive number")
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
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


def _int(values: dict[str, Any], key: str, default: int | None = None) -> int:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config {key}={value!r} is not a non-negative integer")
    return value


def _languages(values: dict[str, Any]) -> tuple[str, ...]:
    """Language names in id order, from `lang2id`/`id2lang`.

    A config that names none: one language is taken to be English (as transformers' tokenizer assumes, and as
    xlm-mlm-en-2048 is); several are called `lang0`, `lang1`, ...
    """
    n_langs = _int(values, "n_langs", 1)
    lang2id = values.get("lang2id")
    id2lang = values.get("id2lang")
    if lang2id is None and id2lang is not None:
        lang2id = {name: int(i) for i, name in id2lang.items()}
    if lang2id is None:
        return ("en",) if n_langs == 1 else tuple(f"lang{i}" for i in range(n_langs))
    if id2lang is not None and {int(i): n for i, n in id2lang.items()} != {i: n for n, i in lang2id.items()}:
        raise ConfigError("config's id2lang and lang2id disagree")
    if sorted(lang2id.values()) != list(range(n_langs)):
        raise ConfigError(f"config's lang2id {lang2id} does not number n_langs={n_langs} languages from 0")
    return tuple(sorted(lang2id, key=lang2id.__getitem__))


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
