"""``python -m kho_fs``: the same as the ``kho-fs`` command."""

import sys

from kho_fs.cli import main

sys.exit(main())
