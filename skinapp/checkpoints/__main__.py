"""``python -m skinapp.checkpoints``: see :mod:`skinapp.checkpoints.cli`."""

import sys

from skinapp.checkpoints.cli import main

sys.exit(main())
