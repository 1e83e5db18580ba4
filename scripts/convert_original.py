#!/usr/bin/env python
"""Convert an original facebookresearch/XLM checkpoint (mlm_enfr_1024.pth, ...) to transformers' layout.

    python scripts/convert_original.py mlm_enfr_1024.pth --codes codes_enfr --out weights/xlm-mlm-enfr-1024

The output directory (config.json, model.safetensors, vocab.json, merges.txt, tokenizer_config.json) loads with
`xlm.load_pretrained` and with transformers. It is written to a temporary directory and renamed into place; an
existing DIR is replaced only with --force. The checkpoint is read with the weights-only unpickler (plus numpy's
data classes) and is never modified. Exit code 0 on success, 2 on bad arguments or an unusable checkpoint. The
logic lives in xlm/convert.py.
"""

import sys

from xlm.convert import main

if __name__ == "__main__":
    sys.exit(main())
