"""``python -m vlm_helpers.cli`` (also ``torchrun ... -m vlm_helpers.cli``) = ``vlm-train``."""

import sys

from vlm_helpers.cli.main import main

sys.exit(main())
