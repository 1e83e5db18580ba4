#!/usr/bin/env python
"""Build the English-French corpus of real translations from the system's gettext catalogs.

    python scripts/make_gettext_corpus.py                        # -> data/gettext-enfr/ and a counts table
    python scripts/make_gettext_corpus.py --out /tmp/enfr --seed 1 --monolingual disjoint --no-tokens

Writes {split}.en-fr.en / {split}.en-fr.fr (line-aligned pairs), {split}.en / {split}.fr (monolingual) and
counts.json, for split in train, valid, test. The rules (cleaning, the split by catalog, deduplication) are
stated in xlm/gettext_corpus.py, where the logic lives. Exit code 2 on bad arguments or unreadable catalogs.
"""

import sys

from xlm.gettext_corpus import main

if __name__ == "__main__":
    sys.exit(main())
