"""Files that survive crashes: atomic writes, strict CSV, and lock files the OS releases when
their holder dies. No torch here: bnstudy.results reads records without it."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


class RecordsError(RuntimeError):
    """A run folder or record file that cannot be used as asked; the message names it."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers (and crashes) see old or new, never half.

    A write that fails (disk full, no permission) leaves the old file and no temporary behind,
    and raises RecordsError naming the file.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _cannot_write(path, e) from e


def _cannot_write(path: Path, error: OSError) -> RecordsError:
    return RecordsError(
        f"cannot write {path}: {error.strerror or error}; free some space or make the folder "
        "writable, or choose another paths.output_root"
    )


def write_csv(path: Path, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
    """Write `rows` under `columns`; a row with a column too many or too few is an error
    (a typo must not vanish into a blank cell)."""
    write_atomic(path, _csv_text(path, columns, rows, header=True).encode())


def append_csv(path: Path, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
    """Add `rows` at the end of the CSV `path`, whose header is `columns` (written whole when
    the file is missing). One write of whole lines, so a crash leaves the old rows and at
    most a partial last line, which `read_csv` leaves out: the cost of a record stays the
    size of the new rows, not of the file."""
    if not path.is_file():
        write_csv(path, columns, rows)
        return
    text = _csv_text(path, columns, rows, header=False)
    try:
        with open(path, "a", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _cannot_write(path, e) from e


def _csv_text(
    path: Path, columns: tuple[str, ...], rows: list[Mapping[str, Any]], header: bool
) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        if set(row) != set(columns):
            unknown, missing = sorted(set(row) - set(columns)), sorted(set(columns) - set(row))
            raise ValueError(f"{path.name}: unknown fields {unknown}, missing fields {missing}")
        writer.writerow({c: _cell(row[c]) for c in columns})
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(io.StringIO(complete_lines(f.read()))))


def complete_lines(text: str) -> str:
    """`text` without a last line that has no newline: what an append cut short by a crash
    leaves (files written whole always end with one)."""
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision, so reruns can be compared exactly
    return value


@contextmanager
def held(path: Path) -> Iterator[bool]:
    """Try to take the lock file `path` without waiting; yields whether we hold it. The OS
    releases it when the holder dies (flock), so a killed run never stays locked."""
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
