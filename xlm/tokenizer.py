"""XLM's tokenizer: text in one language -> token ids, equal id for id to transformers' `XLMTokenizer`.

`Tokenizer.encode(text, lang)` runs, in order:

    0.   literal special tokens in the text (`</s>`, `<special1>`, ...) are cut out and keep their ids,
         if the preset asks for it
    1-5. Moses preprocessing and tokenization with `lang`'s rules                   (xlm/moses.py)
    6.   lowercase + accent removal, if the preset asks for it                      (xlm/moses.py)
    7.   BPE of every word; a piece missing from the vocabulary becomes `<unk>` 3   (xlm/bpe.py)
    8.   framing with special tokens

Two presets, i.e. two answers to "which XLM tokenization do you want?":

    preset          step 0        steps 1-5          step 6: lowercase + strip accents     step 8: framing
    "transformers"  yes           transformers'      as tokenizer_config.json's            <s> X </s>
                                  (sacremoses)       `do_lowercase_and_remove_accent`      (ids 0 ... 1)
    "original"      no: `</s>`    the Moses Perl     only if the vocabulary has no         </s> X </s>
                    is text       scripts of 2018    uppercase letter, i.e. if XLM's       (ids 1 ... 1)
                                                     training data was lowercased

"transformers" reproduces what the published checkpoints get through transformers (the parity target);
"original" reproduces what the models saw in training, line for line equal to XLM's own preprocessing (the
Perl scripts, then fastBPE). They differ for the English-French model: its vocabulary is cased (`The`, `été`
are entries) yet its hub config asks for lowercasing, XLM never fed `<s>` to a model, and the Perl scripts
put a space where transformers deletes a tab. docs/tokenizer.md shows both on real ids.

BPE with or without the vocabulary (`bpe_with_vocab`, step 7): XLM applied BPE to its training data with the
merges only, and to its valid/test data with the vocabulary too, which splits a merged piece missing from the
vocabulary back into the pieces it was made from (xlm/bpe.py). Both presets default to the merges only.

Vocabulary layout (XLM's `Dictionary`): `<s>`=0 `</s>`=1 `<pad>`=2 `<unk>`=3 `<special0>`..`<special9>`=4..13
(`<special1>` is the mask), then the BPE pieces. A piece that ends a word carries `</w>` (`chat</w>`), one
that continues a word does not (`mon`).
"""

from __future__ import annotations

import json
import multiprocessing
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from xlm.bpe import END_OF_WORD, Merge, make_bpe, parse_merges, piece_from_fastbpe, read_merges
from xlm.errors import CheckpointError, TokenizerError
from xlm.hub import resolve_tokenizer
from xlm.inputs import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, Batch
from xlm.moses import MosesPipeline, lowercase_and_remove_accents

PRESETS = ("transformers", "original")
# The id that opens a sequence. Original XLM used </s> at both ends ("we use <EOS> for <BOS> everywhere").
_FIRST_ID = {"transformers": BOS_ID, "original": EOS_ID}

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
CONFIG_FILE = "tokenizer_config.json"

# Longest first, so that the alternation takes the longest special token that starts at a position.
_SPECIAL_TOKEN = re.compile("|".join(map(re.escape, sorted(SPECIAL_TOKENS, key=len, reverse=True))))


class Tokenizer:
    """XLM tokenizer over a BPE vocabulary. Usually built by `from_pretrained` or `from_fastbpe`.

    vocab: piece -> id, ids 0..N-1, with the 14 special tokens at 0..13.
    merges: the BPE rules in rank order.
    lang2id: language name -> language-embedding id, from the checkpoint. None for a single-language
        model: any language name is then accepted (it only picks the Moses rules) and maps to id 0.
    preset: "transformers" or "original" (module docstring).
    lowercase_and_remove_accents: None lets the preset decide (transformers: on; original: on only for a
        vocabulary without uppercase letters); a bool overrides it.
    bpe_backend: "python" (exact, the default) or "fastbpe" (the optional C++ extension, same output).
    parse_special_tokens: whether `</s>`, `<special1>`, ... written in the text become their ids. None lets
        the preset decide: transformers yes; original no, the text is encoded as text (`< / s >`), as XLM's
        Perl pipeline did.
    bpe_with_vocab: un-merge BPE pieces missing from the vocabulary, as fastBPE's `applybpe ... VOCAB`, which
        XLM used for valid/test data. Off by default: XLM's training data, and transformers, merge only.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[Merge],
        *,
        lang2id: Mapping[str, int] | None = None,
        preset: str = "transformers",
        lowercase_and_remove_accents: bool | None = None,
        bpe_backend: str = "python",
        parse_special_tokens: bool | None = None,
        bpe_with_vocab: bool = False,
    ):
        if preset not in PRESETS:
            raise TokenizerError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        self.vocab = dict(vocab)
        self._id_to_piece = _check_vocab(self.vocab)
        self.lang2id = _check_lang2id(lang2id)
        self.preset = preset
        if lowercase_and_remove_accents is None:
            lowercase_and_remove_accents = preset == "transformers" or not _has_uppercase(self.vocab)
        self.lowercase_and_remove_accents = lowercase_and_remove_accents
        self.parse_special_tokens = preset == "transformers" if parse_special_tokens is None else parse_special_tokens
        self.bpe_with_vocab = bpe_with_vocab
        pieces = self._id_to_piece[len(SPECIAL_TOKENS) :] if bpe_with_vocab else None
        self.bpe = make_bpe(merges, bpe_backend, vocabulary=pieces)
        self._pipelines: dict[str, MosesPipeline] = {}

    # ---- files -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        preset: str | None = None,
        bpe_backend: str = "python",
        revision: str | None = None,
        local_files_only: bool | None = None,
        parse_special_tokens: bool | None = None,
        bpe_with_vocab: bool = False,
    ) -> Tokenizer:
        """Load transformers' layout: `vocab.json`, `merges.txt`, and `tokenizer_config.json` if present.

        path: a local directory, or a hub id (`FacebookAI/xlm-clm-enfr-1024`, or the legacy `xlm-clm-enfr-1024`)
            at `revision`, through huggingface_hub's cache (xlm/hub.py; `local_files_only`: the cache only).
        preset None means "transformers": a directory in this layout is a transformers checkpoint, and its
        tokenizer_config.json says what transformers does with it. Without that file, transformers'
        defaults apply: lowercase + accent removal on, no languages. The last two options as in the constructor.
        """
        try:
            directory = resolve_tokenizer(path, revision=revision, local_files_only=local_files_only)
        except CheckpointError as error:
            raise TokenizerError(str(error)) from None
        config_path = directory / CONFIG_FILE
        config = _read_json(config_path) if config_path.exists() else {}
        preset = preset or "transformers"
        lowercase = config.get("do_lowercase_and_remove_accent") if preset == "transformers" else None
        if lowercase is not None and not isinstance(lowercase, bool):
            raise TokenizerError(f"{config_path}: do_lowercase_and_remove_accent must be true or false")
        return cls(
            _read_vocab_json(directory / VOCAB_FILE),
            read_merges(directory / MERGES_FILE),
            lang2id=config.get("lang2id"),
            preset=preset,
            lowercase_and_remove_accents=lowercase,
            bpe_backend=bpe_backend,
            parse_special_tokens=parse_special_tokens,
            bpe_with_vocab=bpe_with_vocab,
        )

    @classmethod
    def from_fastbpe(
        cls,
        codes_path: str | Path,
        vocab_path: str | Path,
        *,
        languages: Sequence[str] | Mapping[str, int] | None = None,
        preset: str = "original",
        bpe_backend: str = "python",
        parse_special_tokens: bool | None = None,
        bpe_with_vocab: bool = False,
    ) -> Tokenizer:
        """Load XLM's original files: fastBPE codes (`a b count`) and vocabulary (`token count`, `@@`).

        languages: the model's languages in language-id order (`["en", "fr"]`), or name -> id; None for a
            single-language model. The original files do not record them (XLM kept them in the checkpoint).
        The other options as in the constructor: `bpe_with_vocab=True` for text encoded as XLM's valid/test data.
        """
        if isinstance(languages, str):
            raise TokenizerError(f"languages must be a list of names such as ['en', 'fr'], got {languages!r}")
        if languages is not None and not isinstance(languages, Mapping):
            languages = {name: index for index, name in enumerate(languages)}
        return cls(
            read_fastbpe_vocab(vocab_path),
            read_merges(codes_path),
            lang2id=languages,
            preset=preset,
            bpe_backend=bpe_backend,
            parse_special_tokens=parse_special_tokens,
            bpe_with_vocab=bpe_with_vocab,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `vocab.json`, `merges.txt` and `tokenizer_config.json`, the files transformers reads.

        The config keeps the languages and the lowercasing flag. The framing is not saved: it is chosen by
        the `preset` of whoever loads the files.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        merges = "".join(f"{left} {right}\n" for left, right in self.bpe.merges)
        config: dict[str, object] = {
            "tokenizer_class": "XLMTokenizer",
            "do_lowercase_and_remove_accent": self.lowercase_and_remove_accents,
        }
        if self.lang2id is not None:
            config["lang2id"] = self.lang2id
            config["id2lang"] = {str(index): name for name, index in self.lang2id.items()}
        (directory / VOCAB_FILE).write_text(_vocab_json_text(self.vocab), encoding="utf-8")
        (directory / MERGES_FILE).write_text(merges, encoding="utf-8")
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return directory

    # ---- languages and sizes ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_piece)

    @property
    def languages(self) -> tuple[str, ...]:
        """The model's languages in id order; empty for a single-language model (any Moses language works)."""
        return tuple(sorted(self.lang2id, key=self.lang2id.__getitem__)) if self.lang2id else ()

    @property
    def bpe_backend(self) -> str:
        return self.bpe.name

    def lang_id(self, lang: str) -> int:
        """The language-embedding id of `lang`; TokenizerError listing the known languages if it has none."""
        self._check_lang(lang)
        return self.lang2id[lang] if self.lang2id is not None else 0

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, languages={list(self.languages)}, "
            f"preset={self.preset!r}, lowercase_and_remove_accents={self.lowercase_and_remove_accents}, "
            f"bpe_backend={self.bpe_backend!r})"
        )

    # ---- text -> pieces -> ids -> text -----------------------------------------------------------------

    def tokenize(self, text: str, lang: str) -> list[str]:
        """BPE pieces of `text` in transformers' notation, unframed: `["le</w>", "mon", "tre", "al</w>"]`."""
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        pipeline = self._pipeline(lang)
        pieces: list[str] = []
        start = 0
        specials = _SPECIAL_TOKEN.finditer(text) if self.parse_special_tokens and "<" in text else ()
        for special in specials:
            pieces += self._text_pieces(text[start : special.start()], pipeline)
            pieces.append(special.group())
            start = special.end()
        pieces += self._text_pieces(text[start:], pipeline)
        return pieces

    def encode(self, text: str, lang: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, framed as the preset says (`<s> … </s>` or `</s> … </s>`) by default.

        lang picks the Moses rules (French splits `l'été` into `l'` `été`, English into `l` `'été`) and must
        be one of the model's languages.
        """
        ids = [self.vocab.get(piece, UNK_ID) for piece in self.tokenize(text, lang)]
        return self.frame(ids) if add_special_tokens else ids

    def frame(self, ids: Sequence[int], pair_ids: Sequence[int] | None = None) -> list[int]:
        """Frame with special tokens: `<s> A </s>`, `<s> A </s> B </s>`; "original" opens with `</s>`."""
        framed = [_FIRST_ID[self.preset], *ids, EOS_ID]
        return framed if pair_ids is None else [*framed, *pair_ids, EOS_ID]

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = False) -> str:
        """The pieces' text, one space between words: the Moses-tokenized (maybe lowercased) text.

        The same string as transformers' `decode`. Moses tokenization is not undone: `noir .`, not `noir.`.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise TokenizerError(f"decode takes one sequence (a 1-D tensor), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        pieces = []
        for value in ids:
            token_id = self._checked_id(value)
            if not (skip_special_tokens and token_id < len(SPECIAL_TOKENS)):
                pieces.append(self._id_to_piece[token_id])
        return "".join(pieces).replace(END_OF_WORD, " ").strip()

    # ---- batches ---------------------------------------------------------------------------------------

    def batch(
        self,
        texts: Sequence[str],
        langs: str | Sequence[str],
        *,
        padding_side: str = "right",
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> Batch:
        """Encode B texts and pad them into a `Batch` of (B, T) tensors, T = the longest row.

        langs: one language for all texts, or one per text. padding_side "left" puts the padding before the
        text, as batched generation needs; the text then sits at positions T - length … T - 1.
        max_length: a longer row is an error, nothing is truncated silently.
        """
        texts = _check_texts(texts)
        langs = self._langs_per_item(langs, len(texts))
        sequences = [
            self.encode(text, lang, add_special_tokens=add_special_tokens)
            for text, lang in zip(texts, langs, strict=True)
        ]
        return self.pad(sequences, langs, padding_side=padding_side, max_length=max_length)

    def pad(
        self,
        sequences: Sequence[Sequence[int]],
        langs: str | Sequence[str],
        *,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> Batch:
        """A `Batch` of already encoded sequences (e.g. from `encode_lines`); arguments as in `batch`."""
        if padding_side not in ("right", "left"):
            raise TokenizerError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if len(sequences) == 0:
            raise TokenizerError("cannot make a batch of zero sequences")
        lang_ids = [self.lang_id(lang) for lang in self._langs_per_item(langs, len(sequences))]
        lengths = [len(sequence) for sequence in sequences]
        width = max(lengths)
        if max_length is not None and width > max_length:
            raise TokenizerError(
                f"sequence {lengths.index(width)} has {width} tokens, more than max_length={max_length}"
            )
        input_ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            start = 0 if padding_side == "right" else width - len(sequence)
            checked = [self._checked_id(value) for value in sequence]
            input_ids[row, start : start + len(sequence)] = torch.tensor(checked, dtype=torch.long)
            attention_mask[row, start : start + len(sequence)] = 1
        langs_tensor = torch.tensor(lang_ids, dtype=torch.long)[:, None].repeat(1, width)
        return Batch(input_ids, attention_mask, langs_tensor)

    # ---- bulk ------------------------------------------------------------------------------------------

    def encode_lines(
        self,
        lines: Iterable[str],
        lang: str | Sequence[str],
        *,
        add_special_tokens: bool = True,
        workers: int = 1,
        chunk_size: int = 1000,
    ) -> list[list[int]]:
        """`encode` every line, in order; with `workers` processes when workers > 1.

        Moses is ~85% of the cost and pure Python, so processes, not threads, speed it up. Each worker gets
        a copy of this tokenizer once, then chunks of `chunk_size` lines. lang: one for all lines or one per
        line. A line's trailing newline does no harm (a control character, removed by step 3).
        """
        if workers < 1 or chunk_size < 1:
            raise TokenizerError(f"workers and chunk_size must be at least 1, got {workers} and {chunk_size}")
        lines = _check_texts(lines if isinstance(lines, str) else list(lines))
        langs = self._langs_per_item(lang, len(lines))
        for name in set(langs):
            self._pipeline(name)  # an unknown or unsupported language fails here, not in a worker
        chunks = [
            (lines[start : start + chunk_size], langs[start : start + chunk_size], add_special_tokens)
            for start in range(0, len(lines), chunk_size)
        ]
        if workers == 1 or len(chunks) == 1:
            encoded_chunks = [self._encode_chunk(chunk) for chunk in chunks]
        else:
            with multiprocessing.get_context().Pool(workers, _start_worker, (self,)) as pool:
                encoded_chunks = pool.map(_encode_chunk_in_worker, chunks)
        return [ids for chunk in encoded_chunks for ids in chunk]

    # ---- internals -------------------------------------------------------------------------------------

    def _text_pieces(self, text: str, pipeline: MosesPipeline) -> list[str]:
        """Steps 1-7 on text without special tokens; empty words (transformers skips them) are dropped."""
        words = pipeline(text)
        if self.lowercase_and_remove_accents:
            words = lowercase_and_remove_accents(words)
        return [piece for word in words if word for piece in self.bpe.segment(word)]

    def _pipeline(self, lang: str) -> MosesPipeline:
        pipeline = self._pipelines.get(lang) if isinstance(lang, str) else None
        if pipeline is None:
            self._check_lang(lang)
            pipeline = self._pipelines[lang] = MosesPipeline(lang, original=self.preset == "original")
        return pipeline

    def _check_lang(self, lang: str) -> None:
        if not isinstance(lang, str) or not lang:
            raise TokenizerError(f"a language is a name such as 'en', got {lang!r}")
        if self.lang2id is not None and lang not in self.lang2id:
            known = ", ".join(self.languages)
            raise TokenizerError(f"unknown language {lang!r}; this tokenizer knows: {known}")

    def _langs_per_item(self, langs: str | Sequence[str], count: int) -> list[str]:
        if isinstance(langs, str):
            return [langs] * count
        if not isinstance(langs, Iterable):
            raise TokenizerError(f"langs must be a language name or one name per text, got {langs!r}")
        langs = list(langs)
        if len(langs) != count:
            raise TokenizerError(f"got {len(langs)} languages for {count} texts; give one, or one per text")
        return langs

    def _checked_id(self, value: object) -> int:
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise TokenizerError(f"token ids must be integers, got {value!r}")
        token_id = operator.index(value)
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return token_id

    def _encode_chunk(self, chunk: tuple[list[str], list[str], bool]) -> list[list[int]]:
        lines, langs, add_special_tokens = chunk
        return [
            self.encode(line, lang, add_special_tokens=add_special_tokens)
            for line, lang in zip(lines, langs, strict=True)
        ]

    def __getstate__(self) -> dict:
        # Worker processes rebuild the Moses pipelines on first use: cheaper than pickling them.
        return {**self.__dict__, "_pipelines": {}}


# The worker side of `encode_lines`: each process receives the tokenizer once, through the pool initializer.
_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk_in_worker(chunk: tuple[list[str], list[str], bool]) -> list[list[int]]:
    return _worker_tokenizer._encode_chunk(chunk)


# ---- XLM's original files -> transformers' files -------------------------------------------------------


def read_fastbpe_vocab(path: str | Path) -> dict[str, int]:
    """vocab.json's mapping (piece -> id) from a fastBPE vocabulary (`token count` lines, `@@` continues).

    Ids follow XLM's `Dictionary.read_vocab`: the 14 special tokens, then one id per line from 14, skipping
    (as it does) lines that contain U+2028, lines without exactly two fields, and tokens seen before. A token
    ending in `@@` continues a word and loses the `@@`; any other token ends a word and gains `</w>`.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    seen = set(SPECIAL_TOKENS)
    # Lines end at "\n" only, as when XLM iterates over the file: str.splitlines() would also split at U+2028.
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        columns = line.split()
        if "\u2028" in line or len(columns) != 2 or columns[0] in seen:
            continue
        token, count = columns
        if not count.isdigit():
            raise TokenizerError(f"{path}, line {line_number}: expected `token count`, got {line!r}")
        seen.add(token)
        vocab[piece_from_fastbpe(token)] = len(vocab)
    return vocab


def convert_fastbpe_vocab(codes_path: str | Path, vocab_path: str | Path, out_dir: str | Path) -> Path:
    """Write transformers' `vocab.json` and `merges.txt` from XLM's codes + vocab pair; returns out_dir.

    merges.txt is the codes file itself (transformers reads the first two fields of each line), with a final
    newline added if it lacks one. vocab.json is `json.dumps(vocab, indent=2)` in id order, the format of
    the hub's files (for enfr: 64,139 entries, 1,452,740 bytes).
    """
    codes = _read_text(codes_path)
    parse_merges(codes, source=str(codes_path))  # reject a malformed codes file before writing anything
    vocab = read_fastbpe_vocab(vocab_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VOCAB_FILE).write_text(_vocab_json_text(vocab), encoding="utf-8")
    (out_dir / MERGES_FILE).write_text(codes if codes.endswith("\n") else codes + "\n", encoding="utf-8")
    return out_dir


# ---- checks and small file helpers ---------------------------------------------------------------------


def _read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenizerError(f"cannot read {path}: {error}") from None


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise TokenizerError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return content


def _read_vocab_json(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not all(type(index) is int for index in vocab.values()):
        raise TokenizerError(f"{path} must map every piece to an integer id")
    return vocab


def _vocab_json_text(vocab: Mapping[str, int]) -> str:
    return json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), indent=2)


def _check_vocab(vocab: dict[str, int]) -> list[str]:
    """Check piece -> id and return id -> piece."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if vocab.get(token) != expected_id:
            raise TokenizerError(f"the vocabulary gives {token} the id {vocab.get(token)}; XLM needs {expected_id}")
    id_to_piece = sorted(vocab, key=vocab.__getitem__)
    if [vocab[piece] for piece in id_to_piece] != list(range(len(vocab))):
        raise TokenizerError("vocabulary ids must be 0..N-1, each used once")
    return id_to_piece


def _check_lang2id(lang2id: Mapping[str, int] | None) -> dict[str, int] | None:
    if lang2id is None or lang2id == {}:
        return None  # transformers, too, treats an empty lang2id as "no languages"
    if not isinstance(lang2id, Mapping) or not all(isinstance(name, str) for name in lang2id):
        raise TokenizerError(f"lang2id must map language names to ids, got {lang2id!r}")
    if sorted(lang2id.values()) != list(range(len(lang2id))):
        raise TokenizerError(f"lang2id must give the ids 0..{len(lang2id) - 1} once each, got {dict(lang2id)}")
    return dict(lang2id)


def _has_uppercase(pieces: Iterable[str]) -> bool:
    """Whether lowercasing changes any piece: a vocabulary learned on lowercased text has none."""
    return any(piece != piece.lower() for piece in pieces)


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TokenizerError("expected a list of texts, got one str; wrap a single text in a list")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(f"text {index} must be a str, got {type(text).__name__}")
    return texts
