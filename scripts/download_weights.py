#!/usr/bin/env python
"""Download an XLM checkpoint from the Hugging Face hub into weights/<name>/, verified, as safetensors.

    python scripts/download_weights.py xlm-clm-enfr-1024                  # -> weights/xlm-clm-enfr-1024/
    python scripts/download_weights.py FacebookAI/xlm-mlm-enfr-1024 --revision main --out weights
    HF_HUB_OFFLINE=1 python scripts/download_weights.py xlm-clm-enfr-1024   # from the hub cache only

Running it again verifies the existing directory (sha256 against manifest.json) and leaves it alone; --force
downloads again. Exit code 0 on success, 2 on bad arguments or a failed download. The logic lives in
xlm/download.py.
"""

import sys

from xlm.download import main

if __name__ == "__main__":
    sys.exit(main())
