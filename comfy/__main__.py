"""``python -m comfy``: see :mod:`comfy.cli`."""

import sys

from .cli import main

sys.exit(main())
