"""Reading raw input files: gzip detection, line iteration, bad-line policy, vocab ranking.

Every preparation reports a problem in its input the same way: a :class:`RawInputError` (a
:class:`~dien.data.format.DatasetError`) whose message starts with the file and the line (or
column) and then says what is wrong. With ``on_bad_lines="skip"`` the problem is counted under
a short reason instead, the counts go to the manifest's ``counts["filtered"]``, and the first
few are logged as warnings, so nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import numpy as np

from dien.data.format import UNKNOWN, DatasetError

logger = logging.getLogger(__name__)

try:  # orjson parses JSON lines several times faster than the standard library
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover - exercised only where orjson is not installed
    from json import loads as json_loads  # noqa: F401 - same name, other module


OnBadLines = Literal["error", "skip"]
GZIP_MAGIC = b"\x1f\x8b"
WARNINGS_PER_REASON = 5
BLOCK_BYTES = 1 << 23  # files are read in blocks of 8 MiB and split into lines


class RawInputError(DatasetError):
    """A raw input file is unreadable or holds a bad line; names the file, line and problem."""


def where(path: str | Path, line: int | None = None, column: str | None = None) -> str:
    """``file``, ``file, line 3`` or ``file, line 3, column 'user'`` for error messages."""
    text = str(path)
    if line is not None:
        text += f", line {line}"
    if column is not None:
        text += f", column '{column}'"
    return text


def check_on_bad_lines(value: str) -> OnBadLines:
    if value not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', got {value!r}")
    return value  # type: ignore[return-value]


class BadLines:
    """Applies the ``on_bad_lines`` policy and keeps the count of each reason skipped."""

    def __init__(self, on_bad_lines: str) -> None:
        self.mode = check_on_bad_lines(on_bad_lines)
        self.counts: dict[str, int] = {}

    def report(self, reason: str, location: str, problem: str, n: int = 1) -> None:
        """Raise for a bad line, or count ``n`` of them under ``reason`` when skipping."""
        if self.mode == "error":
            raise RawInputError(f"{location}: {problem} (pass on_bad_lines='skip' to skip)")
        seen = self.counts.get(reason, 0)
        self.counts[reason] = seen + n
        if seen < WARNINGS_PER_REASON:
            logger.warning("skipped (%s) %s: %s", reason, location, problem)

    def add(self, reason: str, n: int) -> None:
        """Count ``n`` records dropped by a rule of the protocol (not a bad line)."""
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for binary reading, transparently gunzipping when it starts with gzip magic."""
    path = Path(path)
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == GZIP_MAGIC
    except FileNotFoundError:
        raise RawInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RawInputError(f"{path}: is a folder, expected a file") from None
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line without its newline)`` of a plain or gzip file.

    Blank lines are passed through; a corrupt or truncated gzip stream is a
    :class:`RawInputError` naming the file and the last good line.
    """
    lineno = 0
    rest = b""
    with open_binary(path) as f:
        try:
            while block := f.read(BLOCK_BYTES):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    lineno += 1
                    yield lineno, line.removesuffix(b"\r")
        except (EOFError, OSError, zlib.error) as e:
            raise RawInputError(
                f"{where(path, lineno + 1)}: the gzip stream is corrupt or truncated ({e})"
            ) from None
    if rest:
        yield lineno + 1, rest.removesuffix(b"\r")


def decode_problem(line: bytes) -> str | None:
    """Say why ``line`` is not UTF-8 text, or None when it is."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start} is 0x{line[e.start]:02x})"
    return None


def raw_id_problem(value: str) -> str | None:
    """Say why ``value`` cannot be a raw id of a vocabulary, or None when it can be one.

    A prepared dataset stores each vocabulary one raw id a line, ``<unk>`` first, so a raw id
    is a non-empty line of UTF-8 text other than ``<unk>``.
    """
    if not value:
        return "is empty"
    if "\n" in value or "\r" in value:
        return "holds a line break"
    if value == UNKNOWN:
        return f"is {UNKNOWN!r}, the name of the unknown id"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not UTF-8 text (it holds a lone surrogate)"
    return None


def rank_by_count(count: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Indices of the entries with ``count > 0``, by descending count, ties by ascending name.

    This is the vocabulary order: the entry at position j of the result gets id j + 1.
    """
    present = np.flatnonzero(count > 0)
    order = np.lexsort((names[present], -count[present]))
    return present[order]


def gather_ragged(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple:
    """Concatenate ``values[starts[i]:starts[i] + lengths[i]]`` for all i without a Python loop.

    Returns ``(flat, offsets)`` with ``offsets`` of length ``len(starts) + 1``.
    """
    lengths = np.asarray(lengths, np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths)
    index += np.arange(offsets[-1], dtype=np.int64)
    return values[index], offsets
