#!/usr/bin/env python
"""Compare xlm with transformers on one checkpoint: per-layer and logit differences, both attention modes.

    python scripts/parity_check.py                                   # synthetic xlm-clm-enfr-1024, offline
    python scripts/parity_check.py --model weights/xlm-clm-enfr-1024 --causal on --json parity.json

Exit code 0 when every compared mode is within --tol, 1 when not, 2 on bad arguments or unreadable files.
The same check is `xlm parity`. The logic lives in xlm/parity.py.
"""

import sys

from xlm.parity import main

if __name__ == "__main__":
    sys.exit(main())
