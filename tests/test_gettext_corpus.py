"""The English-French corpus builder (xlm/gettext_corpus.py): .mo parsing, cleaning, the split by catalog,
deduplication, the files and their counts; and one run on the system's French catalogs.

The unit tests write their own .mo files (`write_mo` below packs the format by hand; the standard library's
reader is the independent reference), so they do not depend on the system catalogs.
"""

from __future__ import annotations

import gettext
import itertools
import json
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import env_flag, skip_or_fail

from xlm.errors import DataError
from xlm.gettext_corpus import (
    DOCS_BEGIN,
    DOCS_END,
    LOCALE_DIR,
    MAX_WORDS,
    SPLITS,
    Catalog,
    MoEntry,
    assign_splits,
    build_corpus,
    clean_pair,
    counts_summary,
    counts_table,
    enfr_tokenizer,
    group_catalogs,
    main,
    one_to_one,
    pair_keys,
    raw_pairs,
    read_mo,
    sentence_key,
    write_corpus,
)

FRENCH_HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n > 1);\n"


def write_mo(path: Path, messages: dict[str, str], *, header: str = FRENCH_HEADER, order: str = "<") -> Path:
    """A GNU .mo file: keys sorted by their bytes, as msgfmt writes them; no hash table (allowed: size 0).

    messages: key -> translation, the key `ctx\\x04msgid` with a context, `msgid\\x00msgid_plural` for a plural
    (its translation `form0\\x00form1`). The metadata entry (empty msgid) holds `header`.
    """
    charset = "latin-1" if "ISO-8859-1" in header else "utf-8"
    entries = sorted(
        [(b"", header.encode("ascii"))] + [(k.encode(charset), v.encode(charset)) for k, v in messages.items()]
    )
    count = len(entries)
    originals_at = 28
    translations_at = originals_at + 8 * count
    blob = bytearray()
    tables: list[list[int]] = [[], []]
    for which in (0, 1):
        for entry in entries:
            tables[which] += [len(entry[which]), translations_at + 8 * count + len(blob)]
            blob += entry[which] + b"\x00"
    head = struct.pack(f"{order}7I", 0x950412DE, 0, count, originals_at, translations_at, 0, 0)
    body = struct.pack(f"{order}{4 * count}I", *tables[0], *tables[1])
    path.write_bytes(head + body + bytes(blob))
    return path


SAMPLE = {
    "_File": "_Fichier",
    "Stock label\x04_Quit": "_Quitter",
    "%d file\x00%d files": "%d fichier\x00%d fichiers",
    "Not translated": "",
    "cannot open '%s': %s": "impossible d'ouvrir « %s » : %s",
}


# ---- reading .mo files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_gives_contexts_plurals_and_the_metadata(tmp_path, order):
    catalog = read_mo(write_mo(tmp_path / "sample.mo", SAMPLE, order=order))
    assert catalog.name == "sample" and catalog.charset == "UTF-8" and catalog.nplurals == 2
    by_msgid = {entry.msgid: entry for entry in catalog.entries}
    assert set(by_msgid) == {"_File", "_Quit", "%d file", "Not translated", "cannot open '%s': %s"}  # no metadata
    assert by_msgid["_Quit"].context == "Stock label" and by_msgid["_Quit"].msgstrs == ("_Quitter",)
    assert by_msgid["%d file"].msgid_plural == "%d files"
    assert by_msgid["%d file"].msgstrs == ("%d fichier", "%d fichiers")
    assert by_msgid["Not translated"].msgstrs == ("",)
    # the standard library's reader agrees on every key it keeps (it drops msgid_plural and empty msgstrs)
    with (tmp_path / "sample.mo").open("rb") as handle:
        reference = gettext.GNUTranslations(handle)._catalog
    assert reference["Stock label\x04_Quit"] == "_Quitter" and reference[("%d file", 1)] == "%d fichiers"
    assert reference["cannot open '%s': %s"] == by_msgid["cannot open '%s': %s"].msgstrs[0]


def test_read_mo_decodes_the_declared_charset(tmp_path):
    header = "Content-Type: text/plain; charset=ISO-8859-1\nPlural-Forms: nplurals=2; plural=(n > 1);\n"
    catalog = read_mo(write_mo(tmp_path / "latin.mo", {"Error": "Erreur : fichier créé"}, header=header))
    assert catalog.charset == "ISO-8859-1"
    assert catalog.entries[0].msgstrs == ("Erreur : fichier créé",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00" * 40, "bad magic number"),
        (struct.pack("<7I", 0x950412DE, 0, 5, 28, 68, 0, 0), "truncated"),
        (struct.pack("<7I", 0x950412DE, 2 << 16, 0, 28, 28, 0, 0), "revision 2"),
    ],
)
def test_read_mo_rejects_what_is_not_a_catalog(tmp_path, content, message):
    path = tmp_path / "bad.mo"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_mo(path)


def test_raw_pairs_handle_plurals_untranslated_entries_and_contexts(tmp_path):
    french = read_mo(write_mo(tmp_path / "fr.mo", SAMPLE))
    assert sorted(raw_pairs(french)) == sorted(
        [
            ("_File", "_Fichier"),
            ("_Quit", "_Quitter"),  # the context is not part of the English text
            ("%d file", "%d fichier"),  # singular -> form 0
            ("%d files", "%d fichiers"),  # plural -> form 1
            ("cannot open '%s': %s", "impossible d'ouvrir « %s » : %s"),
        ]
    )  # "Not translated" (empty msgstr) and the metadata give nothing
    three_forms = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=3; plural=(n==1 ? 0 : 1);\n"
    other = read_mo(write_mo(tmp_path / "pl.mo", {"%d file\x00%d files": "a\x00b\x00c"}, header=three_forms))
    assert raw_pairs(other) == [("%d file", "a")]  # forms do not map to English singular/plural: singular only


def test_read_mo_reads_what_msgfmt_writes(tmp_path):
    if shutil.which("msgfmt") is None:
        pytest.skip("msgfmt (GNU gettext) is not installed")
    po = tmp_path / "sample.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
        '"Plural-Forms: nplurals=2; plural=(n > 1);\\n"\n\n'
        'msgctxt "menu"\nmsgid "_Open"\nmsgstr "_Ouvrir"\n\n'
        'msgid "%d byte"\nmsgid_plural "%d bytes"\nmsgstr[0] "%d octet"\nmsgstr[1] "%d octets"\n',
        encoding="utf-8",
    )
    subprocess.run(["msgfmt", "-o", str(tmp_path / "sample.mo"), str(po)], check=True)
    catalog = read_mo(tmp_path / "sample.mo")
    assert sorted(catalog.entries, key=lambda entry: entry.msgid) == [
        MoEntry("%d byte", ("%d octet", "%d octets"), msgid_plural="%d bytes"),
        MoEntry("_Open", ("_Ouvrir",), context="menu"),
    ]


# ---- cleaning -------------------------------------------------------------------------------------------------

LONG = " ".join(["word"] * (MAX_WORDS + 1))


@pytest.mark.parametrize(
    ("en", "fr", "expected"),
    [
        # accelerators: the only `_` / `&` before a letter, unless its word is the same on the other side
        ("_File", "_Fichier", ("File", "Fichier")),
        ("Save _As", "Enregistrer _sous", ("Save As", "Enregistrer sous")),
        ("_Help", "Aid_e", ("Help", "Aide")),  # a mnemonic inside a word
        ("&Open", "&Ouvrir", ("Open", "Ouvrir")),
        ("GIT_DIR is not set", "GIT_DIR n'est pas défini", ("GIT_DIR is not set", "GIT_DIR n'est pas défini")),
        ("AT&T syntax", "syntaxe AT&T", ("AT&T syntax", "syntaxe AT&T")),
        ("mh_nbytes out of range", "« mh_nbytes » hors plage", ("mh_nbytes out of range", "« mh_nbytes » hors plage")),
        ("a_b and c_d", "a_b et c_d", ("a_b and c_d", "a_b et c_d")),  # two underscores: no mnemonic
        # format specifiers are removed, with the quotes and brackets they leave empty
        ("cannot open '%s': %s", "impossible d'ouvrir « %s » : %s", ("cannot open", "impossible d'ouvrir")),
        ("%1$s on %2$s", "%1$s sur %2$s", ("on", "sur")),
        ("width %-10lu (%.*s)", "largeur %-10lu (%.*s)", ("width", "largeur")),
        ("Breaks '%(pkg)s' now", "Casse « %(pkg)s » maintenant", ("Breaks now", "Casse maintenant")),
        ("Hello {name}, {0} files", "Bonjour {name}, {0} fichiers", ("Hello, files", "Bonjour, fichiers")),
        ("%P: cannot open %pB", "%P : impossible d'ouvrir %pB", ("cannot open", "impossible d'ouvrir")),
        ("100%% done", "100 %% fait", ("100% done", "100 % fait")),
        ("call foo() now", "appeler foo() maintenant", ("call foo() now", "appeler foo() maintenant")),
        # markup and entities
        ("<b>Bold</b> text", "texte <b>gras</b>", ("Bold text", "texte gras")),
        ("The &lt;key&gt; key", "La touche &lt;touche&gt;", ("The <key> key", "La touche <touche>")),
        ("git add <path>", "git add <chemin>", ("git add <path>", "git add <chemin>")),
        # whitespace, ends
        ("  Two\tspaces \n", "Deux\xa0espaces\u202f:", ("Two spaces", "Deux espaces")),
        ("error: %s\n", "erreur : %s\n", ("error", "erreur")),
    ],
)
def test_clean_pair_rules(en, fr, expected):
    dropped = Counter()
    assert clean_pair(en, fr, dropped) == expected
    assert not dropped


@pytest.mark.parametrize(
    ("en", "fr", "reason"),
    [
        ("Usage: foo\n  -h  help", "Usage : foo\n  -h  aide", "multi-line"),
        ("Version:", "Version :", "identical"),
        ("Afar", "afar", "identical"),
        ("_OK", "_OK", "identical"),
        ("%s: %s", "%s : %s", "empty"),
        ("%s (%d)", "%s (%d)", "empty"),
        ("Open", "", "empty"),
        (LONG, "mot", "too long"),
        ("word", LONG, "too long"),
    ],
)
def test_clean_pair_drops(en, fr, reason):
    dropped = Counter()
    assert clean_pair(en, fr, dropped) is None
    assert dropped == {reason: 1}


def test_sentence_key_ignores_case_spaces_and_punctuation():
    assert sentence_key("Fichier : introuvable !") == sentence_key("fichier introuvable") == "fichierintrouvable"
    assert sentence_key("Copy 2") != sentence_key("Copy 3")


# ---- deduplication, grouping, splitting -----------------------------------------------------------------------


def test_one_to_one_keeps_each_sentence_once():
    catalogs = [
        Catalog("a", [("File", "Fichier"), ("Open", "Ouvrir"), ("Close", "Fermer")]),
        Catalog("b", [("File", "Dossier"), ("Open", "Ouvrir"), ("Shut", "Fermer")]),
        Catalog("c", [("File", "Dossier"), ("Quit", "Quitter")]),
    ]
    dropped = Counter()
    kept = one_to_one(catalogs, dropped=dropped)
    # "File": Dossier (2 catalogs) beats Fichier (1); "Fermer": Close and Shut tie, the first in catalog order wins
    assert kept == [("Open", "Ouvrir"), ("Close", "Fermer"), ("File", "Dossier"), ("Quit", "Quitter")]
    assert dropped == {"repeat": 2, "one-to-one": 2}
    held_out = {"en:quit", "fr:fermer"}  # keys of a held-out split
    dropped = Counter()
    assert one_to_one(catalogs, held_out, dropped) == [("Open", "Ouvrir"), ("File", "Dossier")]
    assert dropped["held-out overlap"] == 3  # Close/Fermer, Shut/Fermer, Quit/Quitter


def test_group_catalogs_links_catalogs_that_share_half_their_messages():
    def catalog(name: str, numbers: range) -> Catalog:
        return Catalog(name, [(f"message {n}", f"message n° {n}") for n in numbers])

    catalogs = [
        catalog("big", range(100)),
        catalog("copy", range(100)),  # the same catalog under another name
        catalog("library", range(90, 104)),  # 10 of its 14 in "big": linked
        catalog("sibling", range(200, 210)),
        catalog("neighbour", range(206, 230)),  # 4 of sibling's 10: not linked
        catalog("user", range(102, 112)),  # 2 of 10 shared with library: not linked
    ]
    groups = [[c.name for c in group] for group in group_catalogs(catalogs)]
    assert groups == [["big", "copy", "library"], ["sibling"], ["neighbour"], ["user"]]


def synthetic_catalogs(n: int = 30) -> list[Catalog]:
    return [
        Catalog(f"cat{i:02d}", [(f"english {i} {k}", f"français {i} {k}") for k in range(5 + i % 7)]) for i in range(n)
    ]


def test_assign_splits_whole_groups_seeded_near_the_shares():
    groups = [[catalog] for catalog in synthetic_catalogs()]
    total = sum(len(group[0].pairs) for group in groups)
    first, again, other = (assign_splits(groups, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    names = [c.name for split in SPLITS for c in first[split]]
    assert sorted(names) == sorted(group[0].name for group in groups)  # each catalog exactly once
    for split, share in (("valid", 0.1), ("test", 0.1)):
        pairs = sum(len(c.pairs) for c in first[split])
        assert 0.06 * total <= pairs <= share * total  # filled up to its share, never past it
    with pytest.raises(DataError, match="cannot be split"):
        assign_splits(groups[:2], seed=0)


# ---- the corpus: files, splits, counts ------------------------------------------------------------------------


def write_locale_dir(directory: Path, n_catalogs: int = 24) -> Path:
    """Catalogs prog00.. of 8-20 messages each; every one also holds two library messages ("memory exhausted"
    translated two ways), and prog01-copy is prog01 under another name."""
    directory.mkdir()
    for i in range(n_catalogs):
        messages = {
            f"Cannot read file number {i}-{k}: %s": f"Impossible de lire le fichier {i}-{k} : %s"
            for k in range(8 + i % 13)
        }
        messages["_Quit program %d\x00_Quit programs %d"] = f"_Quitter le programme {i}\x00_Quitter les programmes {i}"
        messages["memory exhausted"] = "mémoire épuisée" if i % 3 else "plus de mémoire"
        messages["write error"] = "erreur d'écriture"
        write_mo(directory / f"prog{i:02d}.mo", messages)
    shutil.copyfile(directory / "prog01.mo", directory / "prog01-copy.mo")
    return directory


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_corpus_splits_share_no_catalog_and_no_sentence(tmp_path):
    corpus = build_corpus(write_locale_dir(tmp_path / "locale"), seed=0)
    catalogs = {split: set(corpus.splits[split].catalogs) for split in SPLITS}
    assert all(catalogs.values())
    assert sum(len(names) for names in catalogs.values()) == len(set().union(*catalogs.values())) == 25
    assert any({"prog01", "prog01-copy"} <= names for names in catalogs.values())  # the copy goes with its original
    keys = {split: {key for pair in corpus.splits[split].pairs for key in pair_keys(pair)} for split in SPLITS}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
    for split in SPLITS:
        pairs = corpus.splits[split].pairs
        assert len({key for pair in pairs for key in pair_keys(pair)}) == 2 * len(pairs)  # one-to-one
    shared = [pair for split in SPLITS for pair in corpus.splits[split].pairs if pair[0] == "memory exhausted"]
    assert shared == [("memory exhausted", "mémoire épuisée")]  # in one split only, its most common translation
    assert corpus.dropped["held-out overlap"] > 0


@pytest.mark.parametrize("monolingual", ["same", "disjoint"])
def test_written_files_match_the_pairs_and_the_counts(tmp_path, monolingual):
    corpus = build_corpus(write_locale_dir(tmp_path / "locale"), seed=3)
    out = tmp_path / "out"
    counts = write_corpus(corpus, out, monolingual=monolingual)
    assert json.loads((out / "counts.json").read_text(encoding="utf-8")) == counts
    for split in SPLITS:
        en, fr = read_lines(out / f"{split}.en-fr.en"), read_lines(out / f"{split}.en-fr.fr")
        assert list(zip(en, fr, strict=True)) == corpus.splits[split].pairs
        stats = counts["splits"][split]
        assert stats["pairs"] == len(en) and stats["catalogs"] == len(corpus.splits[split].catalogs)
        assert stats["en"]["words"] == sum(len(line.split()) for line in en)
        assert stats["fr"]["words"] == sum(len(line.split()) for line in fr)
        mono_en, mono_fr = read_lines(out / f"{split}.en"), read_lines(out / f"{split}.fr")
        assert stats["en"]["monolingual_sentences"] == len(mono_en) and stats["fr"]["monolingual_sentences"] == len(
            mono_fr
        )
        assert stats["en"]["monolingual_words"] == sum(len(line.split()) for line in mono_en)
        if monolingual == "same":
            assert (mono_en, mono_fr) == (en, fr)
        else:  # halves: no monolingual French line translates a monolingual English line
            translation = dict(zip(en, fr, strict=True))
            assert not {translation[line] for line in mono_en} & set(mono_fr)
            assert sorted(mono_en + [dict(zip(fr, en, strict=True))[line] for line in mono_fr]) == sorted(en)
    table = counts_table(counts)
    total = sum(counts["splits"][split]["pairs"] for split in SPLITS)
    assert table.splitlines()[-1].startswith(f"| total | 25 | {total:,} |")


def test_the_corpus_is_deterministic_from_the_seed(tmp_path):
    locale = write_locale_dir(tmp_path / "locale")
    runs = [write_corpus(build_corpus(locale, seed), tmp_path / f"out{i}") for i, seed in enumerate((5, 5, 6))]
    assert (tmp_path / "out0" / "train.en-fr.fr").read_bytes() == (tmp_path / "out1" / "train.en-fr.fr").read_bytes()
    assert runs[0] == runs[1]
    # shuffled: in catalog order, the lines of one catalog would follow each other
    catalog_of_line = [line.split()[-1].split("-")[0] for line in read_lines(tmp_path / "out0" / "train.en-fr.en")]
    changes = sum(a != b for a, b in itertools.pairwise(catalog_of_line))
    assert changes > 0.7 * len(catalog_of_line)
    assert [runs[2]["splits"][s]["catalog_names"] for s in SPLITS] != [
        runs[0]["splits"][s]["catalog_names"] for s in SPLITS
    ]


def test_token_counts_use_the_real_enfr_vocabulary(tmp_path, enfr_vocab_dir):
    tokenizer = enfr_tokenizer(enfr_vocab_dir)
    corpus = build_corpus(write_locale_dir(tmp_path / "locale", n_catalogs=12), seed=0)
    counts = write_corpus(corpus, tmp_path / "out", tokenizer=tokenizer)
    for split in SPLITS:
        for lang in ("en", "fr"):
            lines = read_lines(tmp_path / "out" / f"{split}.en-fr.{lang}")
            expected = sum(len(tokenizer.encode(line, lang, add_special_tokens=False)) for line in lines)
            stats = counts["splits"][split][lang]
            assert stats["tokens"] == stats["monolingual_tokens"] == expected
            assert stats["tokens"] > stats["words"]  # Moses splits off punctuation; BPE splits rare words
    assert "English BPE tokens" in counts_table(counts)


def test_command_line(tmp_path, capsys):
    locale = write_locale_dir(tmp_path / "locale", n_catalogs=12)
    assert main(["--locale-dir", str(locale), "--out", str(tmp_path / "out"), "--no-tokens"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| split | catalogs | pairs |") and "Pairs dropped, by rule: " in printed
    assert (tmp_path / "out" / "counts.json").is_file()
    assert main(["--locale-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no-tokens"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no .mo catalogs in" in error
    with pytest.raises(SystemExit) as exit_info:
        main(["--monolingual", "both"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


# ---- the system's catalogs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system_catalogs() -> list[Path]:
    paths = sorted(LOCALE_DIR.glob("*.mo")) if LOCALE_DIR.is_dir() else []
    if not paths:
        skip_or_fail(f"no gettext catalogs in {LOCALE_DIR}", required=env_flag("CI"))
    return paths


def test_parser_agrees_with_the_standard_library_on_the_system_catalogs(system_catalogs):
    for path in system_catalogs:
        with path.open("rb") as handle:
            reference = {key: value for key, value in gettext.GNUTranslations(handle)._catalog.items() if key != ""}
        ours = {}
        for entry in read_mo(path).entries:
            key = f"{entry.context}\x04{entry.msgid}" if entry.context is not None else entry.msgid
            if entry.msgid_plural is None:
                ours[key] = entry.msgstrs[0]
            else:
                ours.update({(key, form): text for form, text in enumerate(entry.msgstrs)})
        assert ours == reference, path.name


def test_the_system_catalogs_give_a_real_corpus(system_catalogs, report):
    corpus = build_corpus(LOCALE_DIR, seed=0)
    sizes = {split: len(corpus.splits[split].pairs) for split in SPLITS}
    total = sum(sizes.values())
    # Debian 12's 87 French catalogs give 44,274 pairs (seed 0: 35,244 / 4,449 / 4,581); other systems differ.
    assert total >= 10_000, sizes
    # held-out splits are filled up to 10% of the pairs, then grow a little as their sentences leave train
    assert 0.05 * total <= sizes["valid"] <= 0.12 * total and 0.05 * total <= sizes["test"] <= 0.12 * total
    keys = {split: {key for pair in corpus.splits[split].pairs for key in pair_keys(pair)} for split in SPLITS}
    assert not keys["test"] & (keys["train"] | keys["valid"]) and not keys["valid"] & keys["train"]
    catalogs = [set(corpus.splits[split].catalogs) for split in SPLITS]
    assert sum(map(len, catalogs)) == len(set().union(*catalogs)) == len(system_catalogs)
    split_sizes = "/".join(f"{sizes[split]:,}" for split in SPLITS)
    report(f"gettext en-fr corpus: {total:,} pairs, train/valid/test {split_sizes} ({len(system_catalogs)} catalogs)")


def test_the_experiments_page_shows_what_the_command_gives(system_catalogs, tmp_path):
    page = (Path(__file__).resolve().parent.parent / "docs" / "experiments.md").read_text(encoding="utf-8")
    block = page.split(DOCS_BEGIN, 1)[1].split(DOCS_END, 1)[0].strip()
    table, rest = block.split("\n\n", 1)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    if rows[-1][1] != str(len(system_catalogs)):
        pytest.skip(f"the page was made from {rows[-1][1]} catalogs, this system has {len(system_catalogs)}")
    counts = write_corpus(build_corpus(LOCALE_DIR, seed=0), tmp_path)  # without BPE counts: 2 s, not 30
    fresh_table, fresh_rest = counts_summary(counts).split("\n\n", 1)
    fresh_rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in fresh_table.splitlines()]
    assert [row[:5] for row in rows] == fresh_rows  # split, catalogs, pairs, English and French words
    assert rest == fresh_rest  # dropped pairs by rule, held-out catalogs
