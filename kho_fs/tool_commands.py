"""``kho-fs inspect`` and ``kho-fs map``: the commands around :mod:`kho_fs.inspect` and
:mod:`kho_fs.memory_map` (kept apart from them, so the picture code the mount serves as
``machine/map.svg`` never imports the CLI)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from kho_fs.cli import EXIT_FAILURE, EXIT_OK, CommandError


def inspect_command(args: argparse.Namespace) -> int:
    """Decode a handover; any failure is one line and exit 1, never a traceback."""
    from kho_fs.inspect import InspectError, decode, load_source, render_text

    try:
        with load_source(args.source, args.side, args.bitmap_bytes) as src:
            report = decode(src)
    except InspectError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    except Exception as exc:  # garbage the decoder did not foresee: still one line
        raise CommandError(
            f"{args.source}: cannot decode ({type(exc).__name__}: {exc})", EXIT_FAILURE
        ) from None
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(render_text(report))
    return EXIT_OK


def map_command(args: argparse.Namespace) -> int:
    """Draw a mounted machine's physical memory as SVG (``-o`` or stdout) and/or text."""
    from kho_fs.daemon import FSTYPE, mount_type, resolve_mountpoint
    from kho_fs.memory_map import picture_from_mount, render_svg, render_text

    real = resolve_mountpoint(args.mountpoint)
    if mount_type(real) != FSTYPE:
        raise CommandError(f"{args.mountpoint}: not a kho-fs mount", 3)
    try:
        picture = picture_from_mount(real)
    except Exception as exc:
        raise CommandError(
            f"{args.mountpoint}: cannot draw the map ({type(exc).__name__}: {exc})", EXIT_FAILURE
        ) from None
    if args.output:
        svg = render_svg(picture)
        tmp = f"{args.output}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(svg)
            os.replace(tmp, args.output)
        except OSError as exc:
            raise CommandError(f"{args.output}: {exc.strerror}", EXIT_FAILURE) from None
    if args.text:
        sys.stdout.write(render_text(picture))
    elif not args.output:
        sys.stdout.write(render_svg(picture))
    return EXIT_OK
