"""The `xlm` command: generate, score, fill-mask, plus tools that live in their own modules (parity).

    xlm generate --synthetic xlm-clm-enfr-1024 "Wikipedia was used to" --max-new-tokens 16
    xlm generate --model DIR --lang en --continue-lang fr "The cat is" --temperature 0.8 --top-p 0.9 --seed 1
    xlm score --model DIR --lang fr "Le chat est noir." --json
    xlm score --model DIR --lang en --file sentences.txt --framing transformers
    torchrun --nproc-per-node 4 -m xlm score --model DIR --lang en --file sentences.txt --json   # 4 processes
    xlm fill-mask --model MLM_DIR "Paris is the <special1> of France."
    xlm fill-mask --model CLM_DIR "Paris is the <special1> of France." --candidates capital,heart,city
    xlm parity --synthetic xlm-clm-enfr-1024

generate, score and fill-mask take --model (a checkpoint directory; hub ids are passed on to the loader) or
--synthetic PRESET (a seeded random checkpoint, for trying things offline), and --device, --dtype, --fast
(xlm/fast.py), --json; parity, download and convert have options of their own. `xlm --version` prints the version.
Bad input (unknown language, empty or too long prompt, missing checkpoint, ...) prints one line on stderr and
exits with code 2. The text-level framing is `--framing original` (XLM's training: `</s> text </s>`, cased for a
cased vocabulary; the default) or `transformers` (`<s> text </s>`, lowercased as the hub tokenizer_config says).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from xlm import __version__, distributed
from xlm.checkpoint import DTYPES, load_pretrained
from xlm.cliutil import OneLineParser, run_tool, usable_device
from xlm.errors import InputError
from xlm.generation import Decoder, generate
from xlm.inputs import left_pad, right_pad
from xlm.model import XLM
from xlm.scoring import MaskFill, corpus_perplexity, fill_mask, rank_fillers, token_logprobs
from xlm.tokenizer import Tokenizer

FRAMINGS = ("original", "transformers")  # = the tokenizer presets

# Verbs implemented elsewhere as `main(argv, prog) -> int`: name -> (module, help). Adding one is one line.
DELEGATED: dict[str, tuple[str, str]] = {
    "parity": ("xlm.parity", "compare this implementation's logits with transformers' on a checkpoint"),
    "download": ("xlm.download", "download a hub checkpoint into weights/<name>/, as safetensors, with a manifest"),
    "convert": ("xlm.convert", "convert an original XLM .pth checkpoint to transformers' layout"),
    "prepare": ("xlm.data", "tokenize text files into binarized corpora for training"),
    "train": ("xlm.train", "pretrain or fine-tune on prepared corpora: CLM, MLM, TLM (docs/training.md)"),
}


# --- Loading ------------------------------------------------------------------------------------------------


def load(args: argparse.Namespace) -> tuple[XLM, Tokenizer]:
    """The model and tokenizer that --model/--synthetic, --tokenizer, --framing, --device and --dtype name."""
    if args.synthetic is not None:
        from xlm.synthetic import synthetic_checkpoint  # imports transformers only to write a new one

        path: str | Path = synthetic_checkpoint(args.synthetic)
    else:
        path = args.model
    device = distributed.local_device(usable_device(args.device))  # under torchrun: one GPU per process
    attention = "reference" if getattr(args, "compile", False) else "sdpa"  # what Inductor fuses (xlm.fast)
    model = load_pretrained(
        path, dtype=DTYPES[args.dtype], device=device, objective=args.objective, attention=attention
    )
    if uses_fast_kernels(args):
        from xlm.fast import align_weights

        align_weights(model)
    # Only fill-mask reads `<special1>` in its text; the original framing otherwise encodes `<...>` as text.
    specials = True if getattr(args, "parse_special_tokens", False) else None
    # A weights file (`--model DIR/model.safetensors`) has its tokenizer files beside it, as its config.json.
    tokenizer_source = args.tokenizer or (Path(path).parent if Path(path).is_file() else path)
    tokenizer = Tokenizer.from_pretrained(tokenizer_source, preset=args.framing, parse_special_tokens=specials)
    return model, tokenizer


def uses_fast_kernels(args: argparse.Namespace) -> bool:
    return args.fast or getattr(args, "compile", False)


def speed(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """`xlm.fast.kernels()` for --fast/--compile (builds the CPU kernels on first use, ~45 s, then cached)."""
    if not uses_fast_kernels(args):
        return contextlib.nullcontext()
    from xlm.fast import kernels

    return kernels()


def decoder(args: argparse.Namespace) -> Decoder:
    if not uses_fast_kernels(args):
        return Decoder()
    from xlm.fast import FastDecoder

    return FastDecoder(compile_decoding=getattr(args, "compile", False))


def lang_id(model: XLM, lang: str) -> int:
    """The language id of a name, from the model's config; a clear error listing the known ones."""
    if lang not in model.config.lang2id:
        raise InputError(f"unknown language {lang!r}; this model knows: {', '.join(model.config.languages)}")
    return model.config.lang2id[lang]


def prompt_ids(tokenizer: Tokenizer, text: str, lang: str) -> list[int]:
    """A prompt: the framed sentence without its final `</s>` (`</s> w1 w2`, or `<s> w1 w2` in transformers').

    The tokenizer frames whole sentences; a prompt is an unfinished one, and ending it with `</s>` would ask
    the model to start the next sentence.
    """
    if not text.strip():
        raise InputError("empty prompt: give the beginning of a sentence to continue")
    ids = tokenizer.encode(text, lang)[:-1]
    if len(ids) < 2:
        raise InputError(f"the prompt {text!r} has no tokens")
    return ids


def sentence_ids(tokenizer: Tokenizer, text: str, lang: str, limit: int) -> list[int]:
    """A framed sentence to score, checked against the model's positions."""
    if not text.strip():
        raise InputError("empty sentence: nothing to score")
    ids = tokenizer.encode(text, lang)
    if len(ids) > limit:
        raise InputError(f"the sentence has {len(ids)} tokens; XLM has {limit} positions")
    return ids


# --- Verbs --------------------------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    model, tokenizer = load(args)
    lang, continue_lang = lang_id(model, args.lang), lang_id(model, args.continue_lang or args.lang)
    prompts = [prompt_ids(tokenizer, text, args.lang) for text in args.prompt]
    input_ids, attention_mask = left_pad(prompts, model.config.pad_id)
    seed = args.seed if args.seed is not None else torch.Generator().seed()
    generator = torch.Generator(device=model.embeddings.weight.device).manual_seed(seed)
    out = generate(
        model, input_ids, lang, attention_mask=attention_mask, continue_lang=continue_lang,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        generator=generator, allow_mlm=args.allow_mlm, decoder=decoder(args),
    )  # fmt: skip
    results = []
    for text, ids, new in zip(args.prompt, prompts, out.rows(), strict=True):
        results.append({
            "prompt": text,
            "continuation": tokenizer.decode(new, skip_special_tokens=True),
            "prompt_ids": ids,
            "generated_ids": new,
            "stopped_at_eos": bool(new) and new[-1] == model.config.eos_id,
        })  # fmt: skip
    if args.json:
        settings = {k: getattr(args, k) for k in ("lang", "framing", "max_new_tokens", "temperature", "top_k", "top_p")}
        settings["continue_lang"] = args.continue_lang or args.lang
        _print_json({**settings, "seed": seed, "results": results})
    else:
        for result in results:
            print(f"{result['prompt'].rstrip()} {result['continuation']}".rstrip())
    return 0


def run_score(args: argparse.Namespace) -> int:
    if bool(args.text) == (args.file is not None):
        raise InputError("give sentences to score or --file, one of the two")
    model, tokenizer = load(args)
    lang = lang_id(model, args.lang)
    if args.file is not None:
        return _score_file(args, model, tokenizer, lang)
    limit = model.config.max_positions
    sentences = [sentence_ids(tokenizer, text, args.lang, limit) for text in args.text]
    input_ids, attention_mask = right_pad(sentences, model.config.pad_id)
    per_token = token_logprobs(model, input_ids, lang, attention_mask=attention_mask, allow_mlm=args.allow_mlm)
    results = []
    for text, ids, row in zip(args.text, sentences, per_token.tolist(), strict=True):
        logprobs = row[: len(ids) - 1]
        results.append({
            "text": text,
            "ids": ids,
            "tokens": [tokenizer.decode([i]) for i in ids],
            "token_logprobs": logprobs,  # log P(ids[t] | ids[:t]) for t = 1 .. n-1
            "logprob": sum(logprobs),
            "perplexity": math.exp(-sum(logprobs) / len(logprobs)),
        })  # fmt: skip
    if args.json:
        _print_json({"lang": args.lang, "framing": args.framing, "results": results})
    else:
        for r in results:
            n = len(r["token_logprobs"])
            print(f"{r['logprob']:11.3f}  {n:4d} tokens  ppl {r['perplexity']:10.2f}  {r['text']}")
    return 0


def _score_file(args: argparse.Namespace, model: XLM, tokenizer: Tokenizer, lang: int) -> int:
    """Perplexity of a file, one sentence per line (blank lines skipped); under torchrun, over all processes."""
    try:
        lines = [line for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {args.file}: {err}") from None
    if not lines:
        raise InputError(f"{args.file} has no sentences (one per line)")
    options = dict(max_batch_tokens=args.batch_tokens, allow_mlm=args.allow_mlm)
    if distributed.world_size() > 1:
        with distributed.process_group(model.embeddings.weight.device):
            sequences = distributed.encode_lines(tokenizer, lines, args.lang)
            result = distributed.distributed_corpus_perplexity(model, sequences, lang, **options)
        if result is None:
            return 0  # rank 0 writes the results
    else:
        result = corpus_perplexity(model, tokenizer.encode_lines(lines, args.lang), lang, progress=None, **options)
    if args.json:
        _print_json({
            "file": args.file, "lang": args.lang, "framing": args.framing, "sentences": result.sentences,
            "tokens": result.tokens, "nll": result.nll, "mean_nll": result.mean_nll,
            "perplexity": result.perplexity, "sentence_logprobs": result.sentence_logprobs,
            "sentence_tokens": result.sentence_tokens,
        })  # fmt: skip
    else:
        print(
            f"perplexity {result.perplexity:.3f} (mean NLL {result.mean_nll:.4f} nats over {result.tokens} tokens, "
            f"{result.sentences} sentences; framing {args.framing}, lang {args.lang})"
        )
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    model, tokenizer = load(args)
    lang = lang_id(model, args.lang)
    ids = sentence_ids(tokenizer, args.text, args.lang, model.config.max_positions)
    if args.candidates is not None:
        return _rank_candidates(args, model, tokenizer, ids, lang)
    fills = fill_mask(model, torch.tensor([ids]), lang, top_k=args.top_k)
    results = pipeline_results(tokenizer, ids, fills)
    if args.json:
        _print_json(results)
    else:
        for index, row in enumerate(results if len(fills) > 1 else [results]):
            if len(fills) > 1:
                print(f"mask {index + 1}:")
            for r in row:
                print(f"{r['score']:8.4f}  {r['token_str']:<16}  {r['sequence']}")
    return 0


def pipeline_results(tokenizer: Tokenizer, ids: list[int], fills: list[MaskFill]) -> list:
    """transformers' fill-mask pipeline output: {score, token, token_str, sequence} dicts, top first.

    One mask: a list of dicts; several: one list per mask, the other masks left in the sequence (as the
    pipeline does, which then keeps special tokens in `sequence`).
    """
    single = len(fills) == 1
    results = []
    for fill in fills:
        row = []
        for token, score in zip(fill.token_ids, fill.probs, strict=True):
            filled = list(ids)
            filled[fill.position] = token
            sequence = tokenizer.decode(filled, skip_special_tokens=single)
            row.append({"score": score, "token": token, "token_str": tokenizer.decode([token]), "sequence": sequence})
        results.append(row)
    return results[0] if single else results


def _rank_candidates(args: argparse.Namespace, model: XLM, tokenizer: Tokenizer, ids: list[int], lang: int) -> int:
    """Rank fillers of the one mask by sentence log-likelihood under the causal model, best first."""
    names = [c.strip() for c in args.candidates.split(",")]
    if not all(names):
        raise InputError(f"--candidates must be a comma-separated list of non-empty fillers, got {args.candidates!r}")
    candidates = [tokenizer.encode(name, args.lang, add_special_tokens=False) for name in names]
    scores = rank_fillers(model, ids, candidates, lang, allow_mlm=args.allow_mlm).tolist()
    mask_at = ids.index(model.config.mask_id)
    results = [
        {
            "candidate": name,
            "logprob": score,
            "sequence": tokenizer.decode(ids[:mask_at] + filler + ids[mask_at + 1 :], skip_special_tokens=True),
        }
        for name, filler, score in zip(names, candidates, scores, strict=True)
    ]
    results.sort(key=lambda r: r["logprob"], reverse=True)
    if args.json:
        _print_json(results)
    else:
        for r in results:
            print(f"{r['logprob']:11.3f}  {r['candidate']:<16}  {r['sequence']}")
    return 0


def _print_json(value) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": run_generate,
    "score": run_score,
    "fill-mask": run_fill_mask,
}


# --- Arguments ----------------------------------------------------------------------------------------------

# Below this temperature, sampling is greedy decoding in all but name (a logit gap of 0.5 is odds of e^-50), and
# logits / T overflows float32 once T < ~1e-36.
MIN_TEMPERATURE = 0.01


def text_argument(value: str) -> str:
    """Text for the tokenizer: bytes that are not UTF-8 arrive as lone surrogates and would be tokenized as junk."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{os.fsencode(value)!r} is not valid UTF-8 text") from None
    return value


def temperature_argument(value: str) -> float:
    """0 (greedy), or a finite temperature of at least MIN_TEMPERATURE."""
    try:
        temperature = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if temperature != 0 and not MIN_TEMPERATURE <= temperature < math.inf:
        raise argparse.ArgumentTypeError(
            f"{value} is not 0 (greedy) nor a finite number >= {MIN_TEMPERATURE} (below it, sampling is greedy "
            "in all but name: ask for 0)"
        )
    return temperature


def seed_argument(value: str) -> int:
    """A torch generator seed: an integer in 0 .. 2**64 - 1."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= seed < 2**64:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 .. 2**64 - 1 (a 64-bit seed)")
    return seed


def _common_options() -> argparse.ArgumentParser:
    """Options every verb takes: where the model is, how to run it, which language and framing."""
    from xlm.config import PRESETS

    common = OneLineParser(add_help=False)
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="PATH", help="checkpoint directory or weights file; a hub id is passed on")
    source.add_argument(
        "--synthetic", metavar="PRESET", choices=list(PRESETS),
        help="a seeded random checkpoint of that preset (cached in $XLM_CACHE), to try things offline",
    )  # fmt: skip
    common.add_argument("--tokenizer", metavar="DIR", help="tokenizer files (default: the model's directory)")
    common.add_argument("--objective", choices=["clm", "mlm"], help="training objective, if the config is silent")
    common.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps, ...")
    common.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    common.add_argument(
        "--fast", action="store_true",
        help="faster CPU kernels on the same weights (xlm.fast: 2-2.5x faster decoding; results equal within 1e-5)",
    )  # fmt: skip
    common.add_argument("--lang", default="en", type=text_argument, help="language of the input text (default en)")
    common.add_argument(
        "--framing", choices=FRAMINGS, default="original",
        help="original: </s> text </s>, cased as trained (default); transformers: <s> text </s>, hub lowercasing",
    )  # fmt: skip
    common.add_argument("--allow-mlm", action="store_true", help="run a masked LM left to right anyway")
    common.add_argument("--json", action="store_true", help="structured output")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="xlm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"xlm {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = [_common_options()]

    gen = verbs.add_parser("generate", parents=common, help="continue prompts with a causal LM")
    gen.add_argument("prompt", nargs="+", type=text_argument, help="one or more prompts (batched, left-padded)")
    gen.add_argument(
        "--continue-lang", metavar="LANG", type=text_argument, help="language of the generated tokens (default: --lang)"
    )
    gen.add_argument("--max-new-tokens", metavar="N", type=int, default=32, help="default 32")
    gen.add_argument(
        "--temperature", metavar="T", type=temperature_argument, default=0.0,
        help=f"0 = greedy (default), else >= {MIN_TEMPERATURE}",
    )  # fmt: skip
    gen.add_argument("--top-k", metavar="K", type=int, help="sample from the k most likely tokens")
    gen.add_argument("--top-p", metavar="P", type=float, help="sample from the most likely tokens holding mass p")
    gen.add_argument(
        "--seed", type=seed_argument, help="sampling seed, 0 .. 2**64-1 (default: a random one, reported with --json)"
    )
    gen.add_argument(
        "--compile", action="store_true",
        help="--fast, and torch.compile the decode step of batches over 16 prompts (~15-40 s once, ~10%% faster)",
    )  # fmt: skip

    score = verbs.add_parser("score", parents=common, help="log-likelihood of sentences, perplexity of a file")
    score.add_argument("text", nargs="*", type=text_argument, help="sentences to score")
    score.add_argument("--file", metavar="PATH", help="a text file, one sentence per line: its perplexity")
    score.add_argument("--batch-tokens", metavar="N", type=int, default=4096, help="padded tokens per batch (4096)")

    fill = verbs.add_parser("fill-mask", parents=common, help="fill <special1> (MLM) or rank fillers (CLM)")
    fill.add_argument("text", type=text_argument, help="a sentence with <special1> where the mask is")
    fill.add_argument("--top-k", metavar="K", type=int, default=5, help="fillers per mask (default 5)")
    fill.add_argument(
        "--candidates", metavar="A,B,C", type=text_argument, help="rank these fillers by sentence log-likelihood"
    )
    fill.set_defaults(parse_special_tokens=True)  # the mask is written in the text

    for name, (_, help_text) in DELEGATED.items():
        verbs.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:], prog=f"xlm {argv[0]}")
    args = build_parser().parse_args(argv)
    return run_tool(f"xlm {args.verb}", lambda: _run_verb(args))


def command() -> NoReturn:
    """The `xlm` command (`python -m xlm`, the console script): `main` on the command line, then exit with its
    status; under torchrun through `distributed.end_process`, which skips the interpreter's shutdown."""
    code = main()
    if distributed.world_size() > 1:
        distributed.end_process(code)
    raise SystemExit(code)


def _run_verb(args: argparse.Namespace) -> int:
    with speed(args):
        return VERBS[args.verb](args)
