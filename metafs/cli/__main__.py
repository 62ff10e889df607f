"""``python -m metafs.cli``: the ``metafs`` command."""

import sys

from . import main

sys.exit(main())
