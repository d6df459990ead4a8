"""``python -m comfy``: see :mod:`comfy.cli`."""

import sys

from comfy.cli import main

sys.exit(main())
