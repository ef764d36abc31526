"""Sizes of the ``machine/kexec/`` staging files.

The mount enforces them (``kho_fs.tree.profile_v4``); ``kho-fs kexec`` checks them before
it stages anything, so a load that cannot be staged leaves every staging file as it was.
This module imports nothing: the command line stays fast.
"""

KEXEC_STAGING_MAX = 1 << 30  # largest kernel or initrd the staging files accept
KEXEC_CMDLINE_STAGING_MAX = 4096  # machine/kexec/cmdline
