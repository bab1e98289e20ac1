"""What every ``medplib`` command checks before it loads a model, and how it reports a refusal.

* Errors are one line, ``medplib: error: ...`` on stderr, exit 2 — argparse's usage errors too
  (:class:`OneLineParser`), with control characters in the message (a path holding a newline or an
  ANSI escape) shown escaped, as ``repr`` would (:func:`printable`).
* An output never replaces an input of the command, and replaces an existing file only with
  ``--force`` (:func:`check_output`).
* Numbers that would give a confident answer from nothing are refused: NaN/inf voxels on the slice,
  a region mask with NaN or with another geometry than the image (:func:`region_mask_from_file`).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import InputError


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, ESC, bidi overrides, ...) as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def error_line(message: object) -> str:
    return f"medplib: error: {printable(str(message))}"


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block before its error; ``medplib`` prints the error alone (``-h`` shows usage)."""

    def error(self, message: str) -> NoReturn:
        hint = "" if self.prog == "medplib" else f" (medplib {self.prog.split(' ', 1)[-1]} -h shows the options)"
        print(error_line(message + hint), file=sys.stderr)
        sys.exit(2)


def port_number(text: str) -> int:
    """argparse type for ``--port``: 1..65535 (0 would listen on a port nobody is told)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def check_port_free(host: str, port: int) -> None:
    """Bind once before the model loads (tens of seconds), so a taken port is said at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host!r} is not an address this computer can listen on ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is already in use by another program: stop it, or pass "
                                 f"another --port") from None
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------------------- outputs

def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks included
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _dicom_file_in(path: Path, folder: Path) -> bool:
    """Whether ``path`` is a DICOM file (the "DICM" mark at byte 128) in ``folder``: part of the series read."""
    if not path.is_file() or Path(os.path.realpath(path)).parent != Path(os.path.realpath(folder)):
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def check_output(out: str, inputs: Mapping[str, str | None], *, force: bool, option: str = "--out") -> None:
    """Refuse an output that is one of ``inputs`` (by name: path), or a DICOM file of an input folder,
    always; an existing file unless ``force``. Called before any work is done."""
    path = Path(out)
    for name, given in inputs.items():
        if not given:
            continue
        source = Path(given)
        part = source.is_dir() and _dicom_file_in(path, source)
        if part or _same_file(path, source):
            raise InputError(f"{option} {out} is {'a file of ' if part else ''}the command's input {name}: writing "
                             f"there would destroy it; pick another file")
    if (path.exists() or path.is_symlink()) and not force:
        raise InputError(f"{option} {out} already exists: pass --force to replace it, or pick another file")


# ----------------------------------------------------------------------------------------- inputs

def region_mask_from_file(path: str, volume, ref) -> np.ndarray:
    """A region mask file: a 2D mask of the slice's shape, or a label volume with the image's shape
    and geometry (its slice is taken). NaN/inf values are refused: ``NaN != 0`` would mark the voxel."""
    from ..imaging.io import read_volume
    from ..imaging.slicing import take_slice
    from ..validation import check_finite
    from ..imaging.geometry import geometry_differences

    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--region-mask {path}: not a readable .npy file ({exc})") from None
        if arr.dtype.kind not in "biuf":
            raise InputError(f"--region-mask {path}: holds {arr.dtype} values; a mask holds numbers (0 = outside)")
    else:
        mask_volume = read_volume(path, allow_2d=True)
        arr = mask_volume.array
        if arr.ndim == 3 and arr.shape == volume.array.shape:
            differ = geometry_differences(mask_volume, volume)
            if differ:
                raise InputError(f"--region-mask {path} does not share the image's geometry (different {differ}): "
                                 f"it would mark another place")
    check_finite(np.asarray(arr), f"--region-mask {path}")
    if arr.ndim == 3 and arr.shape == volume.array.shape:
        arr = take_slice(arr, axis=ref.axis, index=ref.index)
    elif arr.ndim == 3:
        raise InputError(f"--region-mask {path} has shape {arr.shape}, the image {volume.array.shape}: give a mask "
                         f"of the slice or a volume like the image")
    return np.asarray(arr) != 0


__all__ = ["OneLineParser", "check_output", "check_port_free", "error_line", "port_number",
           "printable", "region_mask_from_file"]
