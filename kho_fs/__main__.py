"""``python -m kho_fs``: the same as the ``kho-fs`` command."""

from kho_fs.cli import entry

entry()
