"""``python -m sam2_encoder.cli``: the same as the ``sam2-encoder`` command (used under ``torchrun``)."""

import sys

from . import main

sys.exit(main())
