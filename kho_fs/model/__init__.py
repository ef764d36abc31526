"""The machine model: a pure, synchronous emulation of an x86-64 kernel with KHO.

Nothing in this package imports pyfuse3 or trio; the FUSE layers sit on top of it.
"""
