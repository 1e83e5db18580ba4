"""The parity check: our XLM against transformers' `XLMWithLMHeadModel` on the same checkpoint and batch.

For each attention mode it reports the max |Δ| of every layer's hidden states (the embedding output first, so
a mismatch points at the layer where it appears), the max and mean |Δ| of the logits, and top-1 agreement.
"causal on" means `causal=True` for us and `config.causal=True` for transformers (the hub config says false).

The batch: seeded random ids drawn from [14, V) (no special ids: transformers would read a stray <pad> as
padding), the last row right-padded by a quarter (transformers does not mask padding under causal attention,
so right padding is the layout where both are defined the same), one language per row, and an explicit
attention mask on the transformers side.

Run `python scripts/parity_check.py --help`; exit code 0 = within tolerance, 1 = not, 2 = bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from xlm.checkpoint import DTYPES, load_pretrained
from xlm.cliutil import OneLineParser, run_tool, usable_device
from xlm.config import PRESETS
from xlm.errors import XLMError
from xlm.inputs import Batch
from xlm.model import XLM
from xlm.synthetic import import_transformers, synthetic_checkpoint

DEFAULT_PRESET = "xlm-clm-enfr-1024"
# bf16/fp16 logits may differ from fp32 by this many roundings of the largest logit (see `rounding_bound`).
LOW_PRECISION_ROUNDINGS = 4


def rounding_bound(dtype: torch.dtype, logits: Tensor) -> float:
    """How far `dtype` logits may be from the fp32 ones: LOW_PRECISION_ROUNDINGS roundings of the largest logit.

    One rounding to `dtype` moves a value x by at most |x| * eps / 2 (eps / 2 = 2^-8 for bf16, 2^-11 for fp16).
    A low-precision forward rounds its weights and every activation; its logits end up within 1.3-2.1 such
    roundings of the largest logit, measured at the scaled-down and full xlm-clm-enfr-1024 sizes (8 x 64 and
    2 x 64 batches, both attention modes, bf16 and fp16); 4 leaves room for other seeds, and fails a step that
    loses precision (a bf16 softmax or LayerNorm costs tens of roundings).
    """
    return LOW_PRECISION_ROUNDINGS * torch.finfo(dtype).eps / 2 * logits.abs().max().item()


@dataclass
class ModeReport:
    causal: bool
    per_layer: list[float]  # max |Δ| of the hidden states: embedding output, then each block
    max_abs_logits: float
    mean_abs_logits: float
    top1_agreement: float  # over real (non-padding) positions
    ok: bool
    bound: float | None = None  # bf16/fp16: the max |Δ| allowed by `rounding_bound`


def make_batch(model: XLM, batch_size: int, seq_len: int, seed: int, device: str | torch.device = "cpu") -> Batch:
    """Seeded ids from [14, V); the last row (of two or more) right-padded by a quarter; a language per row."""
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(14, cfg.vocab_size, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.bool)
    if batch_size > 1:
        attention_mask[-1, seq_len - seq_len // 4 :] = False
        input_ids[~attention_mask] = cfg.pad_id
    langs = None
    if cfg.has_lang_embeddings:
        langs = (torch.arange(batch_size) % cfg.n_langs)[:, None].expand(batch_size, seq_len)
    langs = None if langs is None else langs.to(device)
    return Batch(input_ids.to(device), attention_mask.to(device), langs)


@torch.no_grad()
def compare(ours: XLM, theirs, batch: Batch, causal: bool, accept: Callable[..., bool]) -> ModeReport:
    """Run both models in one attention mode and measure the differences; `accept(max_abs, top1, bound)` judges,
    where bound is `rounding_bound` for a bf16/fp16 model (None in fp32)."""
    theirs.transformer.causal = causal  # transformers reads causal from its config, at construction
    out = theirs(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(), langs=batch.langs,
        output_hidden_states=True,
    )  # fmt: skip
    hidden = ours.encode(
        batch.input_ids, batch.langs, causal=causal, attention_mask=batch.attention_mask, all_layers=True
    )  # (L+1, B, T, C)
    logits = ours.logits(hidden[-1]).float()  # (B, T, V)
    per_layer = [(h.float() - ref.float()).abs().max().item() for h, ref in zip(hidden, out.hidden_states, strict=True)]
    delta = (logits - out.logits.float()).abs()
    real = batch.attention_mask.bool()
    agreement = (logits.argmax(-1) == out.logits.argmax(-1))[real].float().mean().item()
    max_abs = delta.max().item()
    dtype = ours.embeddings.weight.dtype
    bound = None if dtype == torch.float32 else rounding_bound(dtype, out.logits.float())
    ok = accept(max_abs, agreement, bound)
    return ModeReport(causal, per_layer, max_abs, delta.mean().item(), agreement, ok, bound)


def load_transformers_model(path: Path):
    """transformers' own loader on the same files (a lone weights file gets a temporary standard layout)."""
    transformers = import_transformers()
    with ExitStack() as stack:
        if path.is_file():
            layout = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            name = "model.safetensors" if path.suffix == ".safetensors" else "pytorch_model.bin"
            (layout / name).symlink_to(path.resolve())
            (layout / "config.json").symlink_to((path.parent / "config.json").resolve())
            path = layout
        model = transformers.XLMWithLMHeadModel.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def format_table(reports: list[ModeReport], header: str, criterion: str) -> str:
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(reports[0].per_layer))]
    rows = [("max |Δ| hidden states", *("causal " + ("on" if r.causal else "off") for r in reports))]
    rows += [(f"  {name}", *(f"{r.per_layer[i]:.3g}" for r in reports)) for i, name in enumerate(names)]
    rows += [
        ("logits max |Δ|", *(f"{r.max_abs_logits:.3g}" for r in reports)),
        ("logits mean |Δ|", *(f"{r.mean_abs_logits:.3g}" for r in reports)),
        *([("logits max |Δ| allowed", *(f"{r.bound:.3g}" for r in reports))] if reports[0].bound else []),
        ("top-1 agreement", *(f"{100 * r.top1_agreement:.2f}%" for r in reports)),
        (criterion, *("yes" if r.ok else "NO" for r in reports)),
    ]
    width = max(len(row[0]) for row in rows) + 2
    lines = [header, ""] + ["".join([row[0].ljust(width), *(cell.ljust(14) for cell in row[1:])]) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def build_parser(prog: str = "parity_check") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="checkpoint directory or weights file (transformers layout)")
    source.add_argument(
        "--synthetic", metavar="PRESET", choices=list(PRESETS),
        help=f"a seeded random transformers checkpoint of that preset's architecture (default {DEFAULT_PRESET})",
    )  # fmt: skip
    parser.add_argument("--causal", choices=["both", "on", "off"], default="both")
    parser.add_argument("--batch", type=int, default=2, help="rows (default 2; the last one right-padded)")
    parser.add_argument("--seq", type=int, default=64, help="positions per row (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="max |Δ| of the logits allowed (default 1e-4)")
    parser.add_argument(
        "--attention", choices=["sdpa", "reference"], default="sdpa",
        help="our attention kernel: the fused SDPA (default, ~1e-6) or the plain reference (bit-exact on CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32",
        help="our dtype; transformers stays fp32. bf16/fp16 pass within 4 roundings of the largest logit (not "
        "--tol) and on top-1 agreement",
    )  # fmt: skip
    parser.add_argument("--min-top1", type=float, default=0.99, help="for bf16/fp16: top-1 agreement needed")
    parser.add_argument("--device", default="cpu", help="torch device for both models (default cpu)")
    parser.add_argument("--text", help="compare the tokenizers' ids on this text, then the logits on it")
    parser.add_argument("--lang", help="the text's language (default: the model's first)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer files (default: the checkpoint's directory)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def checkpoint_path(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint to compare, and how to name it in the report (a synthetic one is cached, as the CLI's)."""
    if args.model is not None:
        return Path(args.model), args.model
    preset = args.synthetic or DEFAULT_PRESET
    print(
        f"synthetic {preset} checkpoint (seed {args.seed}): written by transformers once, kept in $XLM_CACHE",
        file=sys.stderr,
    )
    path = synthetic_checkpoint(preset, seed=args.seed)
    return path, f"synthetic {preset} (seed {args.seed}, saved by transformers' save_pretrained)"


def transformers_reference_ids(hf, text: str, lang: str, add_special_tokens: bool = True) -> list[int]:
    """The ids transformers' XLMTokenizer `hf` gives `text` in `lang`: what `Tokenizer.encode` must equal.

    transformers' public `tokenize()`/`__call__` drop `lang` (5.24: Moses always runs with English rules), so
    this does what they do with the language passed on: split out literal special tokens (`tokens_trie`),
    run `_tokenize(part, lang=lang)` on the rest, map to ids, add `<s> ... </s>`. For text without literal
    special tokens that is
        hf.build_inputs_with_special_tokens(hf.convert_tokens_to_ids(hf._tokenize(text, lang=lang)))
    """
    pieces = []
    for part in hf.tokens_trie.split(text):
        if part in hf._added_tokens_encoder:  # the special tokens, as `tokenize()` checks them
            pieces.append(part)
        elif part:
            pieces.extend(hf._tokenize(part, lang=lang))
    ids = hf.convert_tokens_to_ids(pieces)
    return hf.build_inputs_with_special_tokens(ids) if add_special_tokens else ids


@dataclass
class TextReport:
    lang: str
    ours: list[int]  # Tokenizer.from_pretrained(dir).encode(text, lang)
    theirs: list[int]  # transformers_reference_ids(XLMTokenizer.from_pretrained(dir), text, lang)

    @property
    def ids_equal(self) -> bool:
        return self.ours == self.theirs

    def summary(self) -> str:
        if self.ids_equal:
            return f"ids ({len(self.ours)}): identical to transformers' _tokenize(text, lang={self.lang!r}) + specials"
        first = next((i for i, (a, b) in enumerate(zip(self.ours, self.theirs, strict=False)) if a != b), None)
        first = min(len(self.ours), len(self.theirs)) if first is None else first
        return f"ids DIFFER from transformers' from position {first}: ours {self.ours}, theirs {self.theirs}"


def text_batch(args: argparse.Namespace, path: Path, ours: XLM) -> tuple[Batch, TextReport]:
    """One row: `--text` encoded by our tokenizer, after checking its ids against transformers' tokenizer."""
    from xlm.tokenizer import Tokenizer  # Moses is loaded only for the text mode

    directory = Path(args.tokenizer) if args.tokenizer else (path if path.is_dir() else path.parent)
    lang = args.lang or ours.config.languages[0]
    ids = Tokenizer.from_pretrained(directory).encode(args.text, lang)
    hf = import_transformers().XLMTokenizer.from_pretrained(directory)
    report = TextReport(lang, ids, transformers_reference_ids(hf, args.text, lang))
    input_ids = torch.tensor([ids], device=args.device)
    langs = None
    if ours.config.has_lang_embeddings:
        langs = torch.full_like(input_ids, ours.config.lang2id[lang])
    return Batch(input_ids, torch.ones_like(input_ids, dtype=torch.bool), langs), report


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or not 1 <= args.seq <= 512:
        raise XLMError(f"--batch must be >= 1 and --seq in 1..512, got {args.batch} x {args.seq}")
    usable_device(args.device)  # a device this machine lacks is a one-line error, before any loading
    if args.json and not Path(args.json).parent.is_dir():  # found before the run, not after its table
        raise XLMError(f"--json {args.json}: no directory {Path(args.json).parent} to write it in")
    text = None
    path, label = checkpoint_path(args)
    ours = load_pretrained(path, dtype=DTYPES[args.dtype], device=args.device, attention=args.attention)
    theirs = load_transformers_model(path).to(args.device)
    if args.text is not None:
        batch, text = text_batch(args, path, ours)
    else:
        batch = make_batch(ours, args.batch, args.seq, args.seed, args.device)
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.causal]
    if args.dtype == "fp32":
        criterion, accept = f"within {args.tol:g}", lambda max_abs, top1, bound: max_abs <= args.tol
    else:  # lower precision cannot be bitwise equal: within its rounding, and the tokens a user sees
        criterion = f"within {LOW_PRECISION_ROUNDINGS} roundings, top-1 >= {100 * args.min_top1:g}%"
        accept = lambda max_abs, top1, bound: max_abs <= bound and top1 >= args.min_top1  # noqa: E731
    reports = [compare(ours, theirs, batch, causal, accept) for causal in modes]
    B, T = batch.input_ids.shape
    shape = f"text: {args.text!r}\n{text.summary()}" if text else f"batch: {B} x {T}, seed {args.seed}"
    header = (
        f"xlm ({args.dtype}, {args.attention} attention, {args.device}) vs transformers "
        f"{import_transformers().__version__} XLMWithLMHeadModel (fp32)\ncheckpoint: {label}\n"
        + shape
        + (", last row right-padded" if B > 1 else "")
    )
    print(format_table(reports, header, criterion))
    ok = all(r.ok for r in reports) and (text is None or text.ids_equal)
    if args.json:
        write_json(args.json, ok, reports, text)
    return 0 if ok else 1


def write_json(path: str, ok: bool, reports: list[ModeReport], text: TextReport | None) -> None:
    result = {
        "ok": ok,
        "max_abs_logits": max(r.max_abs_logits for r in reports),
        "per_layer": [max(values) for values in zip(*(r.per_layer for r in reports), strict=True)],
        "causal": {("on" if r.causal else "off"): asdict(r) for r in reports},
    }
    if text is not None:
        result["text"] = {**asdict(text), "ids_equal": text.ids_equal}
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None, prog: str = "parity_check") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_tool(prog, lambda: run(args))
