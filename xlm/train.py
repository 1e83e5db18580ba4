"""Pretraining and fine-tuning XLM: one plain training loop.

    xlm prepare ...                                        # text -> binarized corpora (xlm/data.py)
    xlm train --data DATA --init FacebookAI/xlm-clm-enfr-1024 --clm en,fr --steps 1000 --out runs/enfr
    xlm train --data DATA --preset xlm-mlm-enfr-1024 --tokenizer DIR --mlm en,fr,en-fr \\
        --optimizer adam_inverse_sqrt,lr=0.0001,beta1=0.9,beta2=0.98,warmup_updates=4000 --out runs/mlm
    torchrun --nproc-per-node 4 -m xlm train ...           # DistributedDataParallel: a share of every batch each
    xlm train --resume runs/enfr                           # continue exactly, from the latest checkpoint

The shape is nanoGPT's train.py (options, model, optimizer, then one loop that evaluates, saves and steps); the
substance is facebookresearch/XLM's train.py and xlm/trainer.py:

- One *step* is one optimizer update on one objective and one language (or pair): the original's `clm_step` and
  `mlm_step` each call `optimize`. Which steps run is the original's `shuf_order`, once per iteration: up to 5
  draws, with replacement, among the monolingual steps of an objective (uniformly, or with probabilities
  p_i^alpha from the data sizes, `lg_sampling_factor`), then up to 5 among its parallel steps; CLM's, then MLM's.
- A loss is (sum over predicted tokens, number of predicted tokens). An update divides the summed gradient by the
  number of tokens predicted in the whole step: all micro-batches (`accumulate`) of all processes. So one process,
  several processes and gradient accumulation all give the mean over the same tokens.
- Adam with the original's options (`--optimizer adam,lr=0.0001` or `adam_inverse_sqrt,...`), the inverse-square-root
  schedule with linear warm-up, gradient clipping at `clip_grad_norm` (5), dropout as the config says.
- Every process builds the same *global* batch (deterministic from the seed) and computes its rows only; the MLM mask
  is drawn on the global batch, so it does not depend on the number of processes either.

A checkpoint is a directory `OUT/checkpoint-STEP` that transformers and `xlm.load_pretrained` both load
(config.json + model.safetensors + the tokenizer files), plus `training_state.pt` (optimizer, loss scaler, data
positions, every random generator) and `train_config.json`. It is written into a temporary sibling and renamed, so
a run killed while saving leaves the previous checkpoint as it was. docs/training.md has the walk-through.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from xlm import data, objectives
from xlm.checkpoint import KEY_TABLE, load_pretrained, torch_load_weights_only
from xlm.cliutil import OneLineParser, run_tool
from xlm.config import PRESETS, XLMConfig, from_hf_config
from xlm.convert import NUMPY_DATA_GLOBALS
from xlm.errors import CheckpointError, ConfigError, InputError
from xlm.files import atomic_directory, clear_leftovers, write_json, write_safetensors
from xlm.model import XLM
from xlm.tokenizer import Tokenizer

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
STEPS_PER_DRAW = 5  # the original's shuf_order(..., n=5)


# --- Options ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a run. Names follow the original's options where they exist (in parentheses)."""

    data: str  # a directory written by `xlm prepare` (--data_path), with train.* and optionally valid.* corpora
    out: str  # where checkpoints and metrics.jsonl go (--dump_path)
    clm: list[str] = field(default_factory=list)  # CLM steps: languages, e.g. ["en", "fr"] (--clm_steps)
    mlm: list[str] = field(default_factory=list)  # MLM steps ("en") and TLM steps ("en-fr") (--mlm_steps)
    # The model: exactly one of `init` (a checkpoint: weights and architecture), `preset` or `model_config`
    # (an architecture, with fresh weights initialised as the original does).
    init: str | None = None  # a directory, a weights file or a hub id (--reload_model)
    preset: str | None = None  # a name in xlm.config.PRESETS
    model_config: str | None = None  # a transformers config.json
    tokenizer: str | None = None  # tokenizer files (default: the `init` directory); checks the data's vocabulary
    dropout: float | None = None  # override the config's (--dropout)
    attention_dropout: float | None = None  # (--attention_dropout)
    # Optimisation
    optimizer: str = "adam,lr=0.0001"  # the original's syntax: method,key=value,... (--optimizer)
    clip_grad_norm: float = 5.0  # 0 = no clipping
    accumulate: int = 1  # global batches per update (--accumulate_gradients)
    steps: int = 1000  # optimizer updates in all
    amp: str = "fp32"  # fp32, bf16 (autocast, CPU or GPU), fp16 (autocast + loss scaling; meant for GPUs)
    fast: bool = False  # CPU: products on oneDNN, the LM head and its loss fused (xlm/fast.py); same math
    device: str = "cpu"
    seed: int = 0
    # Batches (xlm/data.py) and masking (xlm/objectives.py)
    batch_size: int = 32  # rows of a global batch, all processes together
    bptt: int = 256  # tokens per stream row (CLM, MLM)
    max_len: int = 100  # BPE tokens per sentence in TLM pairs
    tokens_per_batch: int = -1  # TLM batches of about this many tokens instead of batch_size pairs (-1: off)
    lg_sampling_factor: float = -1.0  # -1: uniform over the listed steps; alpha > 0: p_i ** alpha
    word_pred: float = 0.15
    sample_alpha: float = 0.0  # 0: uniform selection of masked positions; 0.5: the paper's smoothing
    word_mask_keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Bookkeeping
    eval_every: int = 0  # steps between evaluations on the valid split (0: at the end only, if it exists)
    eval_batches: int = 0  # at most this many batches per held-out corpus (0: all of them)
    save_every: int = 0  # steps between checkpoints (0: at the end only)
    progress: bool = True  # a tqdm bar on stderr

    @property
    def steps_of(self) -> list[tuple[str, str]]:
        """(objective, language or pair) for every listed step, CLM first."""
        return [("clm", lang) for lang in self.clm] + [("mlm", lang) for lang in self.mlm]


@dataclass(frozen=True)
class OptimizerOptions:
    """Adam's options in the original's `--optimizer` syntax: `adam,lr=0.0001` or `adam_inverse_sqrt,lr=...,...`.

    adam_inverse_sqrt (the original's AdamInverseSqrtWithWarmup): lr rises linearly from warmup_init_lr to lr over
    warmup_updates updates, then decays as lr * (warmup_updates / n) ** exp_factor.
    """

    method: str = "adam"
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW), as the original's Adam applies it
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    exp_factor: float = 0.5

    @classmethod
    def parse(cls, text: str) -> OptimizerOptions:
        method, *pairs = text.split(",")
        if method not in ("adam", "adam_inverse_sqrt"):
            raise ConfigError(f"--optimizer {text!r}: the method must be adam or adam_inverse_sqrt")
        names = {f.name for f in dataclasses.fields(cls)} - {"method"}
        if method == "adam":
            names -= {"warmup_updates", "warmup_init_lr", "exp_factor"}
        values: dict[str, Any] = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in names:
                raise ConfigError(f"--optimizer {text!r}: {method} takes {', '.join(sorted(names))}, not {key!r}")
            try:
                values[key] = int(value) if key == "warmup_updates" else float(value)
            except ValueError:
                raise ConfigError(f"--optimizer {text!r}: {key}={value!r} is not a number") from None
        options = cls(method, **values)
        if not (options.lr > 0 and 0 <= options.beta1 < 1 and 0 <= options.beta2 < 1 and options.warmup_updates > 0):
            raise ConfigError(f"--optimizer {text!r}: needs lr > 0, betas in [0, 1), warmup_updates >= 1")
        return options


def learning_rate(options: OptimizerOptions, updates_done: int) -> float:
    """The learning rate of the next update, after `updates_done` updates (the original's get_lr_for_step)."""
    if options.method == "adam":
        return options.lr
    if updates_done < options.warmup_updates:
        slope = (options.lr - options.warmup_init_lr) / options.warmup_updates
        return options.warmup_init_lr + updates_done * slope
    return options.lr * (options.warmup_updates / updates_done) ** options.exp_factor


def check_config(cfg: TrainConfig) -> None:
    """Options that contradict each other or cannot work, as one-line errors before anything is loaded."""
    sources = [name for name in ("init", "preset", "model_config") if getattr(cfg, name) is not None]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --init CHECKPOINT, --preset NAME, --model-config CONFIG.json")
    if cfg.init is None and cfg.tokenizer is None:
        raise ConfigError("a model built from scratch needs --tokenizer DIR (the vocabulary of the prepared data)")
    if cfg.preset is not None and cfg.preset.removeprefix("FacebookAI/") not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
    if not cfg.steps_of:
        raise ConfigError("nothing to train: give --clm LANGS and/or --mlm LANGS (e.g. --mlm en,fr,en-fr)")
    for lang in cfg.clm:
        if "-" in lang:
            raise ConfigError(f"--clm {lang}: CLM runs on monolingual streams; a pair is a TLM step (--mlm {lang})")
    for objective, lang in cfg.steps_of:
        if not re.fullmatch(r"[\w]+(-[\w]+)?", lang) or len(set(lang.split("-"))) != len(lang.split("-")):
            raise ConfigError(f"--{objective} {lang!r}: a language (en) or a pair of two languages (en-fr)")
    if len(set(cfg.clm)) != len(cfg.clm) or len(set(cfg.mlm)) != len(cfg.mlm):
        raise ConfigError("a language is listed twice in --clm or --mlm")
    positive = {"steps": cfg.steps, "accumulate": cfg.accumulate, "batch_size": cfg.batch_size, "bptt": cfg.bptt}
    for name, value in {**positive, "max_len": cfg.max_len}.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, not {value}")
    for name in ("eval_every", "eval_batches", "save_every"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if cfg.amp not in AMP_DTYPES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_DTYPES)}, not {cfg.amp!r}")
    if cfg.lg_sampling_factor != -1 and not cfg.lg_sampling_factor > 0:
        raise ConfigError("--lg-sampling-factor is -1 (uniform) or a positive exponent")
    if cfg.clip_grad_norm < 0:
        raise ConfigError("--clip-grad-norm must be >= 0 (0 = no clipping)")
    OptimizerOptions.parse(cfg.optimizer)


# --- Processes ----------------------------------------------------------------------------------------------


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def my_rows(batch_size: int) -> tuple[int, int]:
    """This process's rows [start, stop) of a global batch: contiguous shares, as even as they can be."""
    return rank() * batch_size // world(), (rank() + 1) * batch_size // world()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the processes, in float64 (token counts and loss sums of every process)."""
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if world() > 1:
        dist.all_reduce(totals)
    return totals.tolist()


def all_gather(value: Any) -> list[Any]:
    """One picklable value per process, in rank order, on every process."""
    if world() == 1:
        return [value]
    values: list[Any] = [None] * world()
    dist.all_gather_object(values, value)
    return values


# --- The model and what computes its losses -----------------------------------------------------------------


def build_model(cfg: TrainConfig, weights: str | Path | None) -> XLM:
    """The model to train, in fp32 on the CPU: `weights` (a checkpoint) or fresh weights of an architecture.

    Fresh weights are the original's initialisation (XLM.init_weights) from `cfg.seed`. Loaded weights are copied
    into a model of their own, so that training never writes into a memory-mapped file.
    """
    loaded = None
    if weights is not None:
        loaded = load_pretrained(weights)
        config = loaded.config
    elif cfg.preset is not None:
        config = XLMConfig.from_name(cfg.preset)
    else:
        config = from_hf_config(Path(cfg.model_config), name=cfg.model_config)
    overrides = {k: getattr(cfg, k) for k in ("dropout", "attention_dropout") if getattr(cfg, k) is not None}
    config = dataclasses.replace(config, **overrides)
    torch.manual_seed(cfg.seed)
    model = XLM(config)
    if loaded is not None:
        model.load_state_dict(loaded.state_dict())
    return model


class Objectives(nn.Module):
    """Model + objective -> (loss summed over the batch's predicted tokens, their number).

    This is the module that DistributedDataParallel wraps: DDP synchronises the gradients of what runs inside its
    own forward, and the objectives call the model's parts (encode, logits) rather than its forward.
    The losses are summed in float64 (`objectives.summed_cross_entropy`), so they compare across set-ups.
    """

    def __init__(self, model: XLM, *, fast: bool = False):
        super().__init__()
        self.model = model
        self.fast = fast  # the head and its cross-entropy fused, chunk by chunk (xlm.fast.summed_head_cross_entropy)
        if fast:
            from xlm.fast import Scratch

            self.head_scratch = Scratch()  # the fused head's big temporaries, allocated once for the run

    def forward(self, objective: str, batch: data.TrainBatch) -> tuple[Tensor, int]:
        """batch: this process's rows; for MLM/TLM masked already (labels set), on the global batch."""
        if self.fast:
            from xlm.fast import summed_head_cross_entropy

            states = objectives.clm_states if objective == "clm" else objectives.mlm_states
            return summed_head_cross_entropy(self.model, *states(self.model, batch), scratch=self.head_scratch)
        if objective == "clm":
            return objectives.clm_loss(self.model, batch)
        return objectives.mlm_loss(self.model, batch)


# --- Data: one batch source per step, and which steps an iteration runs -------------------------------------


def pair_langs(lang: str) -> tuple[str, str] | None:
    """("en", "fr") for a TLM step "en-fr", None for a monolingual step."""
    return tuple(lang.split("-")) if "-" in lang else None  # type: ignore[return-value]


def corpus_of(prepared: data.PreparedData, lang: str, where: str) -> data.Corpus | data.ParallelCorpus:
    """The corpus a step reads; a clear error when the data has none for it."""
    pair = pair_langs(lang)
    if pair is None:
        found = prepared.mono.get(lang)
    elif pair in prepared.para:
        found = prepared.para[pair]
    elif pair[::-1] in prepared.para:  # an fr-en step on en-fr data: the same pairs, French first
        found = prepared.para[pair[::-1]].reversed()
    else:
        found = None
    if found is None:
        have = sorted(prepared.mono) + sorted("-".join(p) for p in prepared.para)
        raise InputError(f"no {where} data for {lang} (the prepared data has: {', '.join(have) or 'nothing'})")
    return found


def batch_source(cfg: TrainConfig, model: XLM, corpus, objective: str, lang: str, seed: int):
    """Global batches for one step: a stream (CLM, MLM) or sentence pairs (TLM), deterministic from `seed`."""
    config = model.config
    pair = pair_langs(lang)
    if pair is None:
        return data.StreamBatches(
            corpus, lang_id=config.lang2id[lang], eos_id=config.eos_id, batch_size=cfg.batch_size, bptt=cfg.bptt,
            seed=seed,
        )  # fmt: skip
    return data.PairBatches(
        corpus, lang_ids=(config.lang2id[pair[0]], config.lang2id[pair[1]]), eos_id=config.eos_id,
        pad_id=config.pad_id, batch_size=cfg.batch_size, max_len=cfg.max_len, tokens_per_batch=cfg.tokens_per_batch,
        seed=seed,
    )  # fmt: skip


def step_seed(seed: int, objective: str, lang: str) -> int:
    """A seed per step source, stable across runs and processes (CLM and MLM on `en` read separate streams)."""
    return (seed * 1_000_003 + zlib.crc32(f"{objective}:{lang}".encode())) % 2**31


def sampling_probabilities(cfg: TrainConfig, prepared: data.PreparedData) -> dict[str, np.ndarray | None]:
    """Per objective and kind (mono/para): the probability of each listed step (None = uniform).

    The original sizes monolingual data by its stream (tokens) and parallel data by its sentence pairs.
    """
    probabilities: dict[str, np.ndarray | None] = {}
    for objective, langs in (("clm", cfg.clm), ("mlm", cfg.mlm)):
        for kind, group in (("mono", [x for x in langs if "-" not in x]), ("para", [x for x in langs if "-" in x])):
            if cfg.lg_sampling_factor == -1 or not group:
                probabilities[f"{objective}-{kind}"] = None
                continue
            sizes = {x: corpus_size(corpus_of(prepared, x, "training")) for x in group}
            p = data.sampling_probabilities(sizes, cfg.lg_sampling_factor)
            probabilities[f"{objective}-{kind}"] = np.array([p[x] for x in group])
    return probabilities


def corpus_size(corpus) -> int:
    return corpus.n_tokens if isinstance(corpus, data.Corpus) else len(corpus)


def iteration_steps(cfg: TrainConfig, order: np.random.Generator, probabilities: dict) -> list[tuple[str, str]]:
    """The steps of one iteration, as the original's `shuf_order` draws them, CLM's before MLM's.

    Per objective: min(5, n) draws with replacement among its n monolingual steps, then among its parallel ones;
    uniformly, or with the `lg_sampling_factor` probabilities.
    """
    steps = []
    for objective, langs in (("clm", cfg.clm), ("mlm", cfg.mlm)):
        for kind, group in (("mono", [x for x in langs if "-" not in x]), ("para", [x for x in langs if "-" in x])):
            if group:
                size = min(STEPS_PER_DRAW, len(group))
                picks = order.choice(len(group), size=size, replace=True, p=probabilities[f"{objective}-{kind}"])
                steps += [(objective, group[i]) for i in picks]
    return steps


# --- A run: everything a checkpoint saves and restores ------------------------------------------------------


@dataclass
class Run:
    cfg: TrainConfig
    device: torch.device
    model: XLM
    module: nn.Module  # Objectives(model), wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # loss scaling for fp16; a pass-through otherwise
    sources: dict[str, Any]  # "clm:en", "mlm:en-fr" -> StreamBatches / PairBatches over the training data
    valid: data.PreparedData | None  # held-out corpora, if the data has a valid split
    probabilities: dict[str, np.ndarray | None]
    order: np.random.Generator  # draws the steps of each iteration
    mask_generator: torch.Generator  # draws the MLM masks (the same on every process)
    mask_options: dict[str, Any]  # xlm.objectives.mask_batch's options
    pending: list[tuple[str, str]] = field(default_factory=list)  # the rest of the current iteration
    step: int = 0  # updates done

    @property
    def options(self) -> OptimizerOptions:
        return OptimizerOptions.parse(self.cfg.optimizer)


def open_data(cfg: TrainConfig, tokenizer: Tokenizer) -> tuple[data.PreparedData, data.PreparedData | None]:
    """The training split, and the valid split if the data has one; every step must find its corpus in both."""
    digest = data.vocab_hash(tokenizer)
    train_data = data.open_prepared(cfg.data, "train", digest)
    valid = data.open_prepared(cfg.data, "valid", digest) if (Path(cfg.data) / "valid").exists() else None
    if valid is None and cfg.eval_every:
        raise ConfigError(
            f"--eval-every needs held-out data: {cfg.data} has no valid split (xlm prepare --split valid)"
        )
    for _, lang in cfg.steps_of:
        corpus_of(train_data, lang, "training")
        if valid is not None:
            corpus_of(valid, lang, "valid")
    return train_data, valid


def check_languages(cfg: TrainConfig, model: XLM, tokenizer: Tokenizer) -> None:
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} pieces, the model {model.config.vocab_size}")
    for objective, lang in cfg.steps_of:
        for name in pair_langs(lang) or (lang,):
            if name not in model.config.lang2id:
                known = ", ".join(model.config.languages)
                raise ConfigError(f"--{objective} {lang}: the model has no language {name!r} (it has {known})")


def setup(cfg: TrainConfig, device: torch.device, resume: Path | None) -> Run:
    """Model, optimizer, data and generators of a fresh run (a resumed one is then restored into it)."""
    model = build_model(cfg, resume if resume is not None else cfg.init).to(device)
    torch.manual_seed(cfg.seed + rank())  # dropout: a stream of its own per process
    tokenizer = Tokenizer.from_pretrained(resume or cfg.tokenizer or cfg.init, preset="original")
    check_languages(cfg, model, tokenizer)
    train_data, valid = open_data(cfg, tokenizer)
    sources = {
        f"{objective}:{lang}": batch_source(
            cfg, model, corpus_of(train_data, lang, "training"), objective, lang, step_seed(cfg.seed, objective, lang)
        )
        for objective, lang in cfg.steps_of
    }
    module: nn.Module = Objectives(model, fast=cfg.fast)
    if world() > 1:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    options = OptimizerOptions.parse(cfg.optimizer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate(options, 0), betas=(options.beta1, options.beta2), eps=options.eps,
        weight_decay=options.weight_decay, fused=device.type in ("cpu", "cuda"),
    )  # fmt: skip
    return Run(
        cfg, device, model, module, optimizer, torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"),
        sources, valid, sampling_probabilities(cfg, train_data), np.random.default_rng(cfg.seed),
        torch.Generator().manual_seed(cfg.seed), mask_options(cfg, model, train_data),
    )  # fmt: skip


def mask_options(cfg: TrainConfig, model: XLM, train_data: data.PreparedData) -> dict[str, Any]:
    """`xlm.objectives.mask_batch`'s options; with sample_alpha > 0, the frequency-smoothed selection weights."""
    config = model.config
    options = dict(
        mask_id=config.mask_id, vocab_size=config.vocab_size, word_pred=cfg.word_pred,
        word_mask_keep_rand=tuple(cfg.word_mask_keep_rand),
    )  # fmt: skip
    if cfg.sample_alpha > 0:  # the paper's smoothing: weights count(token) ** -sample_alpha
        counts = torch.from_numpy(train_data.token_counts())
        weights = objectives.smoothed_selection_weights(counts, cfg.sample_alpha, pad_id=config.pad_id)
        options["selection_weights"] = weights
    return options


# --- One step: forward and backward on every micro-batch, then one update -----------------------------------


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16/fp16 autocast (weights and optimizer stay fp32), or nothing for fp32."""
    dtype = AMP_DTYPES[cfg.amp]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def fast_kernels(cfg: TrainConfig):
    """With `fast`, the block's products on xlm/fast.py's kernels (composed from outside the model), else nothing.

    Only the mode: the decoding kernels, which a training step never uses, are not built."""
    if not cfg.fast:
        return nullcontext()
    from xlm.fast import FastKernels

    return FastKernels()


def train_step(run: Run, objective: str, lang: str) -> dict[str, Any]:
    """One optimizer update on `accumulate` global batches of one step; returns its metrics record.

    The divisor is known before any forward: the tokens predicted in all the global batches of the step. Each
    process backpropagates its rows' summed loss times processes / divisor (DDP then averages over processes),
    so the gradient is that of the mean over those tokens, however the rows are split.
    """
    cfg, started = run.cfg, time.perf_counter()
    run.model.train()
    batches = [run.sources[f"{objective}:{lang}"].next_batch() for _ in range(cfg.accumulate)]  # global batches
    if objective == "mlm":  # drawn on the global batch: the mask does not depend on the number of processes
        batches = [objectives.mask_batch(batch, run.mask_generator, **run.mask_options) for batch in batches]
    count = sum(objectives.predicted_tokens(batch, causal=objective == "clm") for batch in batches)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    for micro, batch in enumerate(batches):
        last = micro == len(batches) - 1
        no_sync = run.module.no_sync() if world() > 1 and not last else nullcontext()  # all-reduce once, at the end
        with no_sync, fast_kernels(cfg):
            with autocast(cfg, run.device):
                summed, _ = run.module(objective, batch.rows(*my_rows(len(batch))).to(run.device))
            run.scaler.scale(summed * (world() / max(count, 1))).backward()
        loss_sum += summed.detach().double()
    (total_loss,) = all_sum([loss_sum.item()], run.device)
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_norm or math.inf)
    lr = learning_rate(run.options, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.scaler.step(run.optimizer)  # skipped when fp16 gradients overflowed; the scale then shrinks
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {
        "step": run.step, "objective": objective, "lang": lang, "loss": total_loss / max(count, 1), "tokens": count,
        "lr": lr, "grad_norm": grad_norm.item(), "seconds": time.perf_counter() - started,
    }  # fmt: skip


def next_step(run: Run) -> tuple[str, str]:
    if not run.pending:
        run.pending = iteration_steps(run.cfg, run.order, run.probabilities)
    return run.pending.pop(0)


# --- Evaluation on held-out data ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(run: Run) -> dict[str, Any]:
    """The run's model on its valid split at this step (see `evaluate_split`)."""
    scores = evaluate_split(run.model, run.cfg, run.valid, mask_options=run.mask_options, device=run.device)
    return {"step": run.step, "split": "valid", **scores}


def evaluate_split(
    model: XLM, cfg: TrainConfig, held_out: data.PreparedData, *, mask_options: dict, device, split: str = "valid"
) -> dict[str, float]:
    """Perplexity and accuracy of every step of `cfg` on a held-out split (the original's evaluate_clm/_mlm).

    Names are the original's: valid_en_clm_ppl, valid_en_mlm_acc, valid_en_fr_mlm_ppl (TLM). Masks come from a
    generator seeded with 0 at every evaluation, as the original's RandomState(0): figures compare across steps.
    """
    scores = {}
    model.eval()
    for objective, lang in cfg.steps_of:
        corpus = corpus_of(held_out, lang, split)
        generator = torch.Generator().manual_seed(0)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, predicted tokens, correct predictions
        for batch in eval_batches(cfg, model, corpus, objective, lang):
            if objective == "mlm":
                batch = objectives.mask_batch(batch, generator, **mask_options)
            predictions = objectives.clm_predictions if objective == "clm" else objectives.mlm_predictions
            with autocast(cfg, device), fast_kernels(cfg):
                logits, targets = predictions(model, batch.rows(*my_rows(len(batch))).to(device))
            loss, count = objectives.summed_cross_entropy(logits, targets)
            totals += torch.tensor([loss.item(), count, (logits.argmax(-1) == targets).sum().item()])
        loss_sum, count, correct = all_sum(totals.tolist(), device)
        name = f"{split}_{lang.replace('-', '_')}_{objective}"
        scores[f"{name}_ppl"] = math.exp(loss_sum / count) if count else math.nan
        scores[f"{name}_acc"] = 100.0 * correct / count if count else math.nan
    model.train()
    return scores


def eval_batches(cfg: TrainConfig, model: XLM, corpus, objective: str, lang: str) -> Iterator[data.TrainBatch]:
    """The held-out corpus once, in order, in global batches (at most `eval_batches` of them)."""
    source = batch_source(cfg, model, corpus, objective, lang, seed=0)
    for i, batch in enumerate(source.eval_batches()):
        if cfg.eval_batches and i == cfg.eval_batches:
            return
        yield batch


# --- Checkpoints --------------------------------------------------------------------------------------------

TRAINING_STATE = "training_state.pt"
TRAIN_CONFIG = "train_config.json"


def transformers_tensors(model: XLM) -> dict[str, Tensor]:
    """The model's tensors under transformers' names (xlm/checkpoint.py's KEY_TABLE backwards), on the CPU.

    The tied head is not stored, as transformers' own save_pretrained does not store it.
    """
    theirs = {ours: name for name, ours in KEY_TABLE.items() if ours is not None}
    tensors = {}
    for key, tensor in model.state_dict().items():
        layer = re.search(r"\.(\d+)\.", key)
        template = key if layer is None else key.replace(layer.group(0), ".{}.", 1)
        name = theirs[template].format(layer.group(1) if layer else "")
        tensors[name if name.startswith("pred_layer.") else f"transformer.{name}"] = tensor.detach().cpu()
    return tensors


def checkpoint_config(run: Run) -> dict[str, Any]:
    """transformers' config.json, plus how the weights were trained.

    `causal` is true for a CLM-only run, so that transformers runs the model as it was trained; clm_steps and
    mlm_steps are the original's training options (`xlm.config.from_hf_config` reads the objective from them).
    """
    cfg = run.cfg
    steps = {"clm_steps": ",".join(cfg.clm), "mlm_steps": ",".join(cfg.mlm)}
    return {**run.model.config.to_hf_config(), "causal": not cfg.mlm, **steps}


def rng_states(run: Run) -> dict[str, Any]:
    """This process's random state: dropout (torch's default generators)."""
    states = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(run.device)
    return states


def training_state(run: Run) -> dict[str, Any]:
    """Everything but the weights that continuing exactly needs; the same on every process except `rng`."""
    return {
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "sources": {key: source.state_dict() for key, source in run.sources.items()},
        "order": run.order.bit_generator.state,
        "pending": [list(step) for step in run.pending],
        "mask_generator": run.mask_generator.get_state(),
        "rng": all_gather(rng_states(run)),  # one per process
    }


def save_checkpoint(run: Run, tokenizer_dir: Path) -> Path:
    """OUT/checkpoint-STEP: written by process 0 into a temporary sibling, renamed into place when complete."""
    state = training_state(run)  # every process takes part (it gathers their random states)
    final = Path(run.cfg.out) / f"checkpoint-{run.step}"
    if rank() == 0:
        with atomic_directory(final, replace=True) as tmp:
            write_json(tmp / "config.json", checkpoint_config(run), sort_keys=True)
            write_safetensors(transformers_tensors(run.model), tmp / "model.safetensors")
            for name in TOKENIZER_FILES:
                if (tokenizer_dir / name).is_file():
                    shutil.copyfile(tokenizer_dir / name, tmp / name)
            write_json(tmp / TRAIN_CONFIG, dataclasses.asdict(run.cfg))
            torch.save(state, tmp / TRAINING_STATE)
    if world() > 1:
        dist.barrier()
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest complete checkpoint of a run directory."""
    path = Path(path)
    if (path / TRAINING_STATE).is_file():
        return path
    found = sorted(
        (int(match.group(1)), child)
        for child in (path.iterdir() if path.is_dir() else [])
        if (match := re.fullmatch(r"checkpoint-(\d+)", child.name)) and (child / TRAINING_STATE).is_file()
    )
    if not found:
        raise CheckpointError(f"--resume {path}: not a training checkpoint, nor a run directory holding one")
    return found[-1][1]


def resume_config(checkpoint: Path, **changes: Any) -> TrainConfig:
    """The TrainConfig a checkpoint was written with; `changes` may extend the run (steps, eval and save cadence)."""
    allowed = {"steps", "eval_every", "eval_batches", "save_every", "progress"}
    if set(changes) - allowed:
        given = ", ".join("--" + name.replace("_", "-") for name in sorted(set(changes) - allowed))
        raise ConfigError(f"--resume continues a run as configured; only {', '.join(sorted(allowed))} may change, "
                          f"not {given}")  # fmt: skip
    try:
        saved = json.loads((checkpoint / TRAIN_CONFIG).read_text(encoding="utf-8"))
        cfg = TrainConfig(**saved)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"--resume {checkpoint}: cannot read {TRAIN_CONFIG}: {err}") from None
    cfg.word_mask_keep_rand = tuple(cfg.word_mask_keep_rand)
    # The run directory is where the checkpoint is now, wherever the run was started.
    return dataclasses.replace(cfg, out=str(checkpoint.parent), **changes)


def restore(run: Run, checkpoint: Path) -> None:
    """Put a run back in the state `training_state` saved (the weights were loaded by `setup`)."""
    state = torch_load_weights_only(checkpoint / TRAINING_STATE, NUMPY_DATA_GLOBALS)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        if set(state["sources"]) != set(run.sources):
            raise ValueError(f"it has steps {', '.join(state['sources'])}")
        for key, source in run.sources.items():
            source.load_state_dict(state["sources"][key])
        run.order.bit_generator.state = state["order"]
        run.pending = [tuple(step) for step in state["pending"]]
        run.mask_generator.set_state(state["mask_generator"])
        run.step = int(state["step"])
        rng = state["rng"]
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"--resume {checkpoint}: {TRAINING_STATE} does not fit this run ({message})") from None
    if len(rng) == world():  # the same number of processes: each continues its own dropout stream
        torch.set_rng_state(rng[rank()]["torch"])
        if "cuda" in rng[rank()] and run.device.type == "cuda":
            torch.cuda.set_rng_state(rng[rank()]["cuda"], run.device)
    else:
        torch.manual_seed(run.cfg.seed + 7919 * run.step + rank())
        if rank() == 0:
            print(f"note: {checkpoint} was written by {len(rng)} processes; dropout draws restart", file=sys.stderr)


# --- The loop -----------------------------------------------------------------------------------------------


def summary(scores: dict[str, Any]) -> str:
    """An evaluation record in one line: step 200: valid_en_clm_ppl 40.37, valid_en_clm_acc 15.14, ..."""
    values = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k not in ("step", "split"))
    return f"step {scores['step']}: {values}"


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per line (process 0 writes). A resumed run first drops the records past
    its checkpoint, which the interrupted run wrote but will now write again."""

    def __init__(self, path: Path, resumed_at: int | None):
        self.path = path
        self.records: list[dict[str, Any]] = []
        if rank() != 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_at is not None and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= resumed_at]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if rank() == 0:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class TrainResult:
    checkpoint: Path  # the last checkpoint written
    records: list[dict[str, Any]]  # this call's metrics records (training steps and evaluations)


def train(cfg: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Train as `cfg` says, or continue the run of the checkpoint `resume` (see `resume_config`) up to cfg.steps.

    Under torchrun (WORLD_SIZE > 1) every process calls this; they share the work of every batch.
    """
    from xlm.distributed import local_device, process_group, world_size

    check_config(cfg)
    if cfg.batch_size < world_size():
        raise ConfigError(f"--batch-size {cfg.batch_size} is fewer rows than the {world_size()} processes")
    checkpoint = find_checkpoint(resume) if resume is not None else None
    device = local_device(torch.device(cfg.device))
    with process_group(device) if world_size() > 1 else nullcontext():
        run = setup(cfg, device, checkpoint)
        if checkpoint is not None:
            restore(run, checkpoint)
        return loop(run, tokenizer_dir(cfg, checkpoint), checkpoint)


def tokenizer_dir(cfg: TrainConfig, checkpoint: Path | None) -> Path:
    """Where the tokenizer files are, to copy into every checkpoint (a hub id is resolved to its local cache)."""
    from xlm.hub import resolve_tokenizer

    return checkpoint if checkpoint is not None else resolve_tokenizer(cfg.tokenizer or cfg.init)


def loop(run: Run, tokenizer_files: Path, checkpoint: Path | None) -> TrainResult:
    """Step, evaluate every `eval_every` steps (and before the first), save every `save_every` steps; evaluate and
    save at the end."""
    from tqdm import tqdm

    cfg = run.cfg
    log = MetricsLog(Path(cfg.out) / "metrics.jsonl", run.step if checkpoint is not None else None)
    if rank() == 0:  # saves that a killed run left half-written (an old checkpoint set aside is put back)
        for name in {stale.name.split(".")[1] for stale in Path(cfg.out).glob(".checkpoint-*.*-*")}:
            clear_leftovers(Path(cfg.out) / name)
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not cfg.progress or rank() != 0, unit="step", mininterval=1.0)

    def evaluate_now() -> None:
        log.write(evaluate(run))
        if not bar.disable:
            bar.write(summary(log.records[-1]), file=sys.stderr)

    def due(every: int) -> bool:
        return every > 0 and run.step % every == 0

    if run.valid is not None and cfg.eval_every and run.step == 0:
        evaluate_now()  # where training starts from (nanoGPT evaluates at step 0 too)
    while run.step < cfg.steps:
        record = train_step(run, *next_step(run))
        log.write(record)
        bar.update()
        bar.set_postfix_str(f"{record['objective']}-{record['lang']} loss {record['loss']:.3f} lr {record['lr']:.2e}")
        if run.valid is not None and due(cfg.eval_every):
            evaluate_now()
        if due(cfg.save_every):
            checkpoint = save_checkpoint(run, tokenizer_files)
    bar.close()
    if log.records and run.valid is not None and not due(cfg.eval_every):
        evaluate_now()
    if checkpoint is None or checkpoint.name != f"checkpoint-{run.step}":
        checkpoint = save_checkpoint(run, tokenizer_files)
    return TrainResult(checkpoint, log.records)


# --- Command line -------------------------------------------------------------------------------------------


def _langs(text: str) -> list[str]:
    return [lang.strip() for lang in text.split(",") if lang.strip()]


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or not math.isclose(sum(values), 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not three fractions summing to 1 (mask,keep,random)")
    return values  # type: ignore[return-value]


# (flag, type, metavar, help); every default is TrainConfig's.
OPTIONS: list[tuple[str, Any, str, str]] = [
    ("--data", str, "DIR", "prepared corpora (xlm prepare): train.* and optionally valid.*"),
    ("--out", str, "DIR", "run directory: checkpoint-STEP/ directories and metrics.jsonl"),
    ("--clm", _langs, "LANGS", "CLM steps, e.g. en,fr (the original's --clm_steps)"),
    ("--mlm", _langs, "LANGS", "MLM and TLM steps, e.g. en,fr,en-fr (--mlm_steps)"),
    ("--init", str, "CKPT", "start from this checkpoint: a directory or a hub id (FacebookAI/xlm-clm-enfr-1024)"),
    ("--preset", str, "NAME", "or fresh weights with a preset's architecture (xlm-mlm-enfr-1024, ...)"),
    ("--model-config", str, "CONFIG.json", "or fresh weights with the architecture of a transformers config.json"),
    ("--tokenizer", str, "DIR", "tokenizer directory (default: --init's); must be the vocabulary of --data"),
    ("--dropout", float, "P", "dropout (default: the config's)"),
    ("--attention-dropout", float, "P", "attention dropout (default: the config's)"),
    ("--optimizer", str, "SPEC", "adam,lr=0.0001 (default) or adam_inverse_sqrt,lr=..,warmup_updates=.., ..."),
    ("--clip-grad-norm", float, "NORM", "clip the gradient norm at this value (default 5; 0: off)"),
    ("--accumulate", int, "N", "global batches per update (default 1)"),
    ("--steps", int, "N", "optimizer updates in all (default 1000)"),
    ("--amp", str, "fp32|bf16|fp16", "fp32 (default), bf16 autocast, or fp16 autocast + loss scaling (GPU)"),
    ("--device", str, "DEVICE", "cpu (default), cuda; under torchrun one GPU per process"),
    ("--seed", int, "N", "seed of the weights, batches, masks and dropout (default 0)"),
    ("--batch-size", int, "ROWS", "rows of a global batch, all processes together (default 32)"),
    ("--bptt", int, "N", "tokens per stream row for CLM and MLM (default 256)"),
    ("--max-len", int, "N", "BPE tokens per sentence of a TLM pair (default 100)"),
    ("--tokens-per-batch", int, "N", "TLM batches of about N tokens rather than --batch-size pairs (default -1: off)"),
    ("--lg-sampling-factor", float, "ALPHA", "-1: steps drawn uniformly (default); > 0: p_i ** ALPHA by data size"),
    ("--word-pred", float, "P", "fraction of positions predicted by MLM (default 0.15)"),
    ("--sample-alpha", float, "ALPHA", "0: uniform choice of masked positions (default); 0.5: the paper's smoothing"),
    ("--word-mask-keep-rand", _fractions, "M,K,R", "predicted positions masked, kept, random (0.8,0.1,0.1)"),
    ("--eval-every", int, "N", "evaluate on the valid split every N steps (default 0: at the end only)"),
    ("--eval-batches", int, "N", "at most N batches per held-out corpus (default 0: all)"),
    ("--save-every", int, "N", "write a checkpoint every N steps (default 0: at the end only)"),
]


def build_parser(prog: str = "xlm train") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Pretrain or fine-tune XLM on prepared corpora (docs/training.md).")
    for flag, kind, metavar, help_text in OPTIONS:
        parser.add_argument(flag, type=kind, metavar=metavar, help=help_text)
    parser.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="CPU: oneDNN products and a fused LM head + loss (xlm/fast.py); the same math, faster",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    parser.add_argument("--resume", metavar="DIR", help="continue a run: a checkpoint or a run directory (its latest)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The run's TrainConfig from the command line, or from the checkpoint to resume plus what may change."""
    given = {key: value for key, value in vars(args).items() if value is not None and key != "resume"}
    if args.resume is not None:
        checkpoint = find_checkpoint(args.resume)
        return resume_config(checkpoint, **given), checkpoint
    missing = [flag for flag in ("data", "out") if flag not in given]
    if missing:
        raise ConfigError(f"--{missing[0]} is required (or --resume DIR)")
    return TrainConfig(**given), None


def main(argv: list[str] | None = None, prog: str = "xlm train") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_tool(prog, lambda: _train_and_report(args))


def _train_and_report(args: argparse.Namespace) -> int:
    cfg, checkpoint = config_from_args(args)
    result = train(cfg, resume=checkpoint)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now
        last = next((r for r in reversed(result.records) if "loss" in r), None)
        summary = f"; last step {last['objective']}-{last['lang']} loss {last['loss']:.4f}" if last else ""
        print(f"{result.checkpoint} (step {cfg.steps}{summary})")
    return 0


__all__ = [
    "OptimizerOptions",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_parser",
    "evaluate",
    "evaluate_split",
    "find_checkpoint",
    "learning_rate",
    "main",
    "mask_options",
    "resume_config",
    "save_checkpoint",
    "setup",
    "train",
    "train_step",
]  # fmt: skip
