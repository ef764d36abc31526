"""kho-fs: a FUSE-mounted emulator of the Linux Kexec HandOver (KHO) interface."""

__version__ = "0.1.0"
