"""The checksummed zarr store under both caches: everything about their integrity, in one place.

A store is a zarr group (zarr-2 on-disk format, see :mod:`.zarr_io`) whose attributes hold, under
its kind's name (:class:`StoreKind`), the spec its layer wrote (what is stored, from what) plus:

* ``format``: :data:`FORMAT`, the layout version; format 1 (no checksums) is refused by name;
* ``complete``: set last, after the whole store was read back; readers refuse stores without it.

Data arrays are cut along their first axis into chunks of ``rows`` rows (one zarr chunk each);
the CRC-32 of each chunk's values (:func:`~.zarr_io.crc32`) goes into an ``int64`` vector beside
it, :data:`NO_CHECKSUM` until written (:class:`ChecksummedArray`). Progress is a ``bool`` vector
of flags, one per unit of work (the feature cache's chunks of a key, the mask cache's episodes),
each set only after the unit's chunks and their checksums are written (:class:`Progress`). So a
store is safe to kill at any time: a rerun redoes the units not flagged.

What is verified when:

* opening (:func:`open_store`): the folder is a zarr group with this kind's attributes of this
  format (else one error naming what it is instead);
* first read (:meth:`ChecksummedArray.read`): each chunk, the first time this object reads it,
  against its recorded CRC-32; a missing chunk file, an undecodable or altered one, or a missing
  checksum raises the kind's error naming the array, chunk and rows;
* ``--verify`` (:func:`verify_progress`): the progress flags, and every chunk of every unit that
  is flagged done (all of them in a complete store), reporting each problem.

Writes are crash-safe: a new store is built under a temporary name and renamed into place whole
(:func:`create_store`); a chunk file is replaced whole by zarr.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .zarr_io import ZarrFormatError, chunk_path, crc32, open_group, store_format

__all__ = [
    "FORMAT",
    "NO_CHECKSUM",
    "ChecksummedArray",
    "Progress",
    "Store",
    "StoreError",
    "StoreKind",
    "complete_when_flagged",
    "create_store",
    "frame_index",
    "open_existing",
    "open_store",
    "read_back",
    "verify_progress",
]

FORMAT = 2
"""Layout version of every store: 2 added a CRC-32 per chunk (format-1 stores are refused by name)."""

_FORMATS = {1: "no checksums"}

NO_CHECKSUM = -1
"""The recorded checksum of a chunk not written yet."""

_READ_BYTES = 64 << 20  # verification reads at most about this much at once


class StoreError(RuntimeError):
    """A store that is missing, incomplete, damaged, of another format, or built from other arguments.

    The base of each cache's error (``CacheError``, ``MaskCacheError``).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        made = type(self).__dict__.get("_made_of")  # a kind's error that is also FileNotFoundError / ValueError
        return (_remake, (*made, self.args)) if made else super().__reduce__()


@functools.cache
def _error_type(base: type[StoreError], also: type[Exception]) -> type[StoreError]:
    """``base`` that is also ``also`` (a missing store is a ``FileNotFoundError`` too); picklable."""
    return type(
        base.__name__, (base, also), {"__module__": base.__module__, "__doc__": base.__doc__, "_made_of": (base, also)}
    )


def _remake(base: type[StoreError], also: type[Exception], args: tuple[Any, ...]) -> StoreError:
    """Unpickle an error made by :func:`_error_type`."""
    return _error_type(base, also)(*args)


_KINDS: dict[str, StoreKind] = {}


@dataclass(frozen=True)
class StoreKind:
    """What kind of store a layer writes, as named in attributes, messages and commands.

    Args:
        attr: The attribute that holds the spec (its presence makes a folder this kind).
        noun: What users call it (``"feature cache"``).
        title: The noun in "X is not a <title>" (``"sam2_encoder feature cache"``).
        command: The command that builds it (``"sam2-encoder cache"``).
        chunk: What one checksummed chunk is called (``"chunk"``, ``"frame"``).
        unit: What one progress flag stands for (``"chunk"``, ``"episode"``).
        verb: What a rerun does to a unit (``"encode"``, ``"track"``).
        error: The layer's error class, derived from :class:`StoreError`.
    """

    attr: str
    noun: str
    title: str
    command: str
    chunk: str
    unit: str
    verb: str
    error: type[StoreError]

    def __post_init__(self) -> None:
        _KINDS[self.attr] = self

    def fail(self, message: str, also: type[Exception] | None = None) -> StoreError:
        """The layer's error with ``message`` (an instance of ``also`` too, when given)."""
        return (self.error if also is None else _error_type(self.error, also))(message)


def open_store(path: str | os.PathLike[str], kind: StoreKind, mode: str = "r") -> tuple[Any, dict[str, Any]]:
    """Open a store of ``kind``: ``(zarr group, recorded spec)``.

    Raises:
        StoreError: The kind's error (also a ``FileNotFoundError`` for a missing folder, a
            ``ValueError`` for one that is not a zarr group) naming what the folder is instead: not
            a zarr group, a store without this kind's attributes (another kind's, named), or one
            of another format.
    """
    path = Path(path)
    try:
        group = open_group(path, mode=mode)
    except FileNotFoundError:
        raise kind.fail(f"{kind.noun} not found: {path}; build it with `{kind.command}`", FileNotFoundError) from None
    except ZarrFormatError as e:  # not a zarr group, or one in a format we do not write
        why = str(e).removeprefix(str(path)).strip()
        message = f"{path} is not a {kind.title}: it {why}" if why.startswith("is ") else f"{path}: {e}"
        raise kind.fail(message, ValueError) from e
    if kind.attr not in group.attrs:
        other = next((k for k in _KINDS.values() if k.attr in group.attrs), None)
        hint = f" (it is a {other.noun}: `{other.command} --verify` checks those)" if other is not None else ""
        raise kind.fail(f"{path} is not a {kind.title} (no {kind.attr!r} attributes){hint}")
    spec = dict(group.attrs[kind.attr])
    found = spec.get("format")
    if found != FORMAT:
        note = f" ({_FORMATS[found]})" if isinstance(found, int) and found in _FORMATS else ""
        raise kind.fail(
            f"{kind.noun} {path} has format {found!r}{note}; this version reads format {FORMAT} (a CRC-32 per "
            f"{kind.chunk}): delete it and rebuild it with the same `{kind.command}` command"
        )
    return group, spec


def open_existing(path: Path, kind: StoreKind, spec: Mapping[str, Any]) -> Store:
    """Open an existing store to resume writing it, refusing one built from another ``spec``.

    Raises:
        StoreError: As :func:`open_store`, with the advice to pass another ``--out``, or naming
            every spec field that differs.
    """
    try:
        store = Store(path, kind, mode="r+")
    except StoreError as e:
        joint = "; or" if str(e).endswith("command") else ";"  # another format: rebuild it, or another --out
        raise type(e)(f"{e}{joint} pass another --out (out=)") from None
    differ = [f for f in spec if store.spec.get(f) != spec[f]]
    if differ:
        details = "; ".join(f"{f}: cache {store.spec.get(f)!r}, now {spec[f]!r}" for f in differ)
        raise kind.fail(f"{path} was built from other arguments ({details}); use another --out or delete it")
    return store


def create_store(path: Path, kind: StoreKind, spec: Mapping[str, Any], declare: Callable[[Any], None]) -> Store:
    """Create a store that appears whole: built under a temporary name, then renamed to ``path``.

    Args:
        path: The store folder (must not exist).
        kind: Its kind.
        spec: What the layer records (``format`` and ``complete`` are added).
        declare: Creates the arrays in the new zarr group.

    Returns:
        The new store, open for writing.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a previous run killed while creating it
    try:
        group = open_group(tmp, mode="w")
        declare(group)
        group.attrs[kind.attr] = {"format": FORMAT, **spec, "complete": False}
        os.replace(tmp, path)  # the store appears whole, every array declared
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Store(path, kind, mode="r+")


class Store:
    """An open store: its folder, zarr group, kind and recorded spec.

    Args:
        path: The store folder.
        kind: What kind of store it must be.
        mode: ``"r"`` or ``"r+"``.

    Raises:
        StoreError: As :func:`open_store`.
    """

    def __init__(self, path: str | os.PathLike[str], kind: StoreKind, mode: str = "r") -> None:
        self.path = Path(path)
        self.kind = kind
        self.group, self.spec = open_store(self.path, kind, mode)

    @property
    def complete(self) -> bool:
        """Whether the store was finished and read back whole."""
        return bool(self.spec.get("complete"))

    def fail(self, problem: str) -> StoreError:
        """The kind's error for a damaged chunk found on reading, with the advice to verify."""
        return self.kind.fail(
            f"{self.kind.noun} {self.path}: {problem}; check it with `{self.kind.command} --verify {self.path}` "
            "and rebuild it"
        )

    def damaged(self, problems: Sequence[str]) -> StoreError:
        """The kind's error for a store whose arrays or small vectors are damaged."""
        return self.kind.fail(
            f"{self.kind.noun} {self.path} is damaged: {'; '.join(problems)}; check it with "
            f"`{self.kind.command} --verify {self.path}` and rebuild it"
        )

    def incomplete(self, done: int, total: int) -> StoreError:
        """The kind's error for a reader given an unfinished store."""
        return self.kind.fail(
            f"{self.kind.noun} {self.path} is incomplete ({done} of {total} {self.kind.unit}s done; an interrupted "
            f"run?): rerun the same `{self.kind.command}` command to finish it"
        )

    def format_problems(self) -> list[str]:
        """``--verify``'s first check: the store is in the zarr-2 on-disk format this package writes."""
        return [] if store_format(self.path) == 2 else [f"{self.path} is not in the zarr-2 format this package writes"]

    def set_attrs(self, **fields: Any) -> None:
        """Update the recorded spec (``complete=True`` last of all, once the store is whole)."""
        self.spec = {**self.spec, **fields}
        self.group.attrs[self.kind.attr] = self.spec

    def read_vector(self, name: str, problems: list[str], default: np.ndarray | None = None) -> np.ndarray | None:
        """A whole small array, or ``default`` (with a problem noted) when a chunk cannot be decoded."""
        try:
            return np.asarray(self.group[name][...])
        except Exception as e:  # noqa: BLE001 - a damaged chunk file
            problems.append(f"{name} cannot be read ({type(e).__name__}: {e})")
            return default

    def seal(self, names: Sequence[str]) -> dict[str, int]:
        """CRC-32 of each whole small array ``names``, to record when the store is completed."""
        return {name: crc32(np.asarray(self.group[name][...])) for name in names}

    def seal_problems(self, arrays: Mapping[str, np.ndarray]) -> list[str]:
        """The small ``arrays`` (read whole) against the CRC-32s recorded as ``sealed_crc32``."""
        sealed = self.spec.get("sealed_crc32") or {}
        problems = []
        for name, values in arrays.items():
            expected, actual = sealed.get(name), crc32(np.asarray(values, dtype=self.group[name].dtype))
            if expected is None:
                problems.append(f"{name} has no recorded CRC-32 (sealed_crc32) in a complete cache")
            elif actual != expected:
                problems.append(
                    f"{name} is damaged: CRC-32 {actual:08x} of its values differs from the recorded {expected:08x}"
                )
        return problems

    def check_array(
        self, name: str, length: int, dtype: str, rows: int | None = None, tail: Sequence[int] | None = None
    ) -> str | None:
        """What is wrong with array ``name`` against what the spec implies, or ``None``.

        Args:
            name: The array's path in the group.
            length: Its first axis.
            dtype: Its dtype.
            rows: Rows per chunk (when checked); the other axes are then chunked whole.
            tail: The other axes (when checked).
        """
        try:
            array = self.group[name]
        except Exception as e:  # noqa: BLE001 - missing or unreadable metadata
            return f"{name} cannot be opened ({type(e).__name__}: {e})"
        shape, chunks = tuple(array.shape), tuple(array.chunks)
        ok = shape[:1] == (length,) and np.dtype(array.dtype) == np.dtype(dtype)
        ok = ok and (tail is None or shape[1:] == tuple(tail))
        ok = ok and (rows is None or chunks == (rows, *shape[1:]))
        if ok:
            return None
        implied = f"{dtype} " + (str((length, *tail)) if tail is not None else f"({length}, ...)")
        if len(shape) == 1 and tail is None:
            implied = f"{dtype} {(length,)}"
        if rows is not None:
            implied += f" in chunks of {(rows, *shape[1:])}"
        return f"{name} is {np.dtype(array.dtype)} {shape} in chunks of {chunks}; the cache attributes imply {implied}"


def frame_index(frames: np.ndarray | Sequence[int], length: int, store: Store) -> np.ndarray:
    """``frames`` as a 1-D int64 index into a store of ``length`` frames.

    Raises:
        TypeError: For anything but a 1-D sequence of integers.
        IndexError: Naming the first frame outside ``[0, length)``.
    """
    index = np.asarray(frames)
    if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
        raise TypeError(f"frames must be a 1-D sequence of integer frame indices, got {index.dtype} {index.shape}")
    index = index.astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= length):
        bad = int(index.min()) if index.min() < 0 else int(index.max())
        raise IndexError(f"frame {bad} is outside {store.kind.noun} {store.path} ({length} frames)")
    return index


class ChecksummedArray:
    """A data array cut into chunks of ``rows`` rows along its first axis, with a CRC-32 per chunk.

    Args:
        store: The open store.
        name: The data array's path in the group.
        sums: The path of its ``int64`` checksum vector (one entry per chunk).
        rows: Rows per chunk.
        describe: ``describe(i)`` names chunk ``i`` in messages (array, chunk, frames).
        sparse: Whether chunks equal to the fill value may be absent (zarr 3 does not write
            them): a missing chunk file is then judged by its checksum, else it is a problem.
    """

    def __init__(
        self, store: Store, name: str, sums: str, rows: int, describe: Callable[[int], str], sparse: bool = False
    ) -> None:
        self.store, self.name, self.sums_name, self.rows = store, name, sums, int(rows)
        self.describe, self.sparse = describe, sparse
        self.data = store.group[name]
        self.length = int(self.data.shape[0])
        self.n_chunks = math.ceil(self.length / self.rows)
        self._sums: np.ndarray | None = None
        self.verified: set[int] = set()
        """Chunks this object has read back against their checksums."""

    def span(self, i: int) -> range:
        """Rows of chunk ``i``."""
        return range(i * self.rows, min((i + 1) * self.rows, self.length))

    def chunks_of(self, start: int, stop: int) -> range:
        """Chunks holding rows ``[start, stop)``."""
        return range(start // self.rows, (max(stop, start + 1) - 1) // self.rows + 1)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write whole chunks from row ``start`` (a chunk boundary), then their checksums."""
        block = np.asarray(block)
        first = start // self.rows
        sums = [crc32(block[j : j + self.rows]) for j in range(0, len(block), self.rows)]
        self.data[start : start + len(block)] = block
        self.store.group[self.sums_name][first : first + len(sums)] = sums
        if self._sums is not None:
            self._sums[first : first + len(sums)] = sums

    def recorded(self, i: int) -> int | str:
        """The recorded CRC-32 of chunk ``i``, or the text of the error that reading it raised."""
        if self._sums is None:
            try:
                self._sums = np.asarray(self.store.group[self.sums_name][...], dtype=np.int64)
            except Exception:  # noqa: BLE001 - a damaged checksum chunk: read the entries one by one
                try:
                    return int(self.store.group[self.sums_name][i])
                except Exception as e:  # noqa: BLE001 - reported as the chunk's problem
                    return f"{type(e).__name__}: {e}"
        return int(self._sums[i])

    def _read(self, chunks: Sequence[int]) -> list[np.ndarray | str]:
        """Each chunk's values, or the text of the error that decoding it raised."""
        spans = [self.span(i) for i in chunks]
        if len(chunks) > 1:
            try:
                rows = np.concatenate([np.arange(s.start, s.stop) for s in spans])
                block = np.asarray(self.data.get_orthogonal_selection((rows,)))
                bounds = np.cumsum([0] + [len(s) for s in spans])
                return [block[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            except Exception:  # noqa: BLE001 - find the chunk(s) at fault one by one
                pass
        out: list[np.ndarray | str] = []
        for s in spans:
            try:
                out.append(np.asarray(self.data[s.start : s.stop]))
            except Exception as e:  # noqa: BLE001 - a damaged chunk file
                out.append(f"{type(e).__name__}: {e}")
        return out

    def problem(self, i: int, values: np.ndarray | str) -> str | None:
        """What is wrong with chunk ``i`` given its decoded ``values`` (or decoding error), or ``None``."""
        where = self.describe(i)
        expected = self.recorded(i)
        file = chunk_path(self.store.path, self.name, (i,) + (0,) * (self.data.ndim - 1))
        if isinstance(expected, str):
            return f"{where}: its checksum cannot be read ({expected})"
        if not self.sparse and not file.exists():
            return f"{where}: the chunk file {file} is missing"
        if expected == NO_CHECKSUM:
            return f"{where}: no checksum was recorded for it ({self.sums_name}[{i}] is unset)"
        if isinstance(values, str):
            return f"{where}: the chunk file {file} cannot be decoded ({values})"
        actual = crc32(values)
        if actual != expected:
            missing = ", which is missing" if not file.exists() else ""
            return (
                f"{where}: damaged, CRC-32 {actual:08x} of its values differs from the recorded {expected:08x} "
                f"({file}{missing})"
            )
        return None

    def problems(self, chunks: Iterable[int]) -> list[str]:
        """Problems of ``chunks``, each read whole and compared with its recorded CRC-32."""
        chunks = [int(i) for i in chunks]
        row_bytes = max(1, int(np.prod(self.data.shape[1:], dtype=np.int64)) * np.dtype(self.data.dtype).itemsize)
        step = max(1, _READ_BYTES // (row_bytes * self.rows))
        found = []
        for a in range(0, len(chunks), step):
            group = chunks[a : a + step]
            found += [self.problem(i, values) for i, values in zip(group, self._read(group))]
        return [p for p in found if p is not None]

    def check(self, chunks: Iterable[int]) -> None:
        """Verify the chunks this object has not verified yet.

        Raises:
            StoreError: The kind's error naming the first bad chunk (missing file, no checksum,
                undecodable, or changed values).
        """
        todo = sorted({int(i) for i in chunks} - self.verified)
        for a in range(0, len(todo), 256):
            group = todo[a : a + 256]
            for i, values in zip(group, self._read(group)):
                problem = self.problem(i, values)
                if problem is not None:
                    raise self.store.fail(problem)
                self.verified.add(i)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The values of some distinct rows, their chunks verified first (once per object)."""
        self.check(np.unique(rows // self.rows))
        try:
            return np.asarray(self.data.get_orthogonal_selection((rows,)))
        except Exception:  # a chunk damaged since it was verified: name it
            chunks = set(np.unique(rows // self.rows).tolist())
            self.verified -= chunks
            self.check(chunks)
            raise


@dataclass
class Progress:
    """A flags vector and, per flag, the chunks of the arrays its unit of work writes.

    Args:
        store: The open store.
        flags: The path of the ``bool`` flags vector.
        units: Per unit (flag), ``[(array, chunks), ...]``: the chunks it writes.
    """

    store: Store
    flags: str
    units: list[list[tuple[ChecksummedArray, Sequence[int]]]]
    values: np.ndarray | None = field(default=None, init=False)

    def read(self, problems: list[str]) -> np.ndarray | None:
        """The flags as a bool vector (``None``, with a problem noted, when they cannot be read)."""
        read = self.store.read_vector(self.flags, problems)
        self.values = None if read is None else np.asarray(read, dtype=bool)
        return self.values

    def write_all(self, flags: np.ndarray) -> None:
        """Replace every flag (the vector written whole)."""
        self.store.group[self.flags][...] = flags
        self.values = np.array(flags, dtype=bool)

    def mark(self, unit: int, done: bool = True) -> None:
        """Flag ``unit`` (only after its chunks and their checksums are written)."""
        self.store.group[self.flags][unit] = done
        if self.values is not None:
            self.values[unit] = done

    def problems(self, unit: int) -> list[str]:
        """Problems of the chunks ``unit`` wrote."""
        return [p for array, chunks in self.units[unit] for p in array.problems(chunks)]


def read_back(pairs: Sequence[tuple[Progress, Iterable[int]]]) -> None:
    """Read back what some units wrote (``(progress, units)`` pairs); unflag those that fail, then raise.

    Raises:
        StoreError: The kind's error counting and naming the bad chunks (a rerun redoes them).
    """
    failed = []
    for progress, units in pairs:
        for unit in units:
            bad = progress.problems(unit)
            if bad:
                progress.mark(unit, False)
                failed += bad
    if failed:
        store = pairs[0][0].store
        kind = store.kind
        chunks = kind.chunk if len(failed) == 1 else f"{kind.chunk}s"
        raise kind.fail(
            f"{kind.noun} {store.path}: {len(failed)} {chunks} failed the read-back check and their "
            f"{kind.unit}s were unflagged (rerun the same command to {kind.verb} them again): " + "; ".join(failed[:5])
        )


def complete_when_flagged(
    store: Store,
    progresses: Sequence[Progress],
    array_problems: Callable[[Store], list[str]],
    sealed: Sequence[str] = (),
) -> tuple[list[np.ndarray], bool]:
    """Set ``complete`` once every unit is flagged (by any rank): arrays checked, all read back, then sealed.

    The order is the store's promise to readers: ``complete`` is written last, after every chunk
    read back equal to its checksum (and the ``sealed`` small arrays' CRC-32s recorded).

    Args:
        store: The open store.
        progresses: Its progress flags (read again: other ranks write theirs).
        array_problems: The kind's check of its arrays (shape, dtype, chunking).
        sealed: Small arrays whose CRC-32s the complete store records.

    Returns:
        ``(flags of each progress as read, whether the store is now complete)``.

    Raises:
        StoreError: Unreadable flags, bad arrays, or chunks failing the read-back (those are unflagged).
    """
    problems: list[str] = []
    flags = [progress.read(problems) for progress in progresses]
    if problems:
        raise store.damaged(problems)
    if not all(f.all() for f in flags):
        return flags, False
    problems = array_problems(store)
    if problems:
        raise store.damaged(problems)
    read_back([(progress, range(len(f))) for progress, f in zip(progresses, flags)])
    if sealed:
        store.set_attrs(sealed_crc32=store.seal(sealed))
    store.set_attrs(complete=True)  # written last: readers only trust complete stores
    return flags, True


def verify_progress(progresses: Sequence[Progress]) -> list[str]:
    """The ``--verify`` walk over a store whose arrays checked out: flags, completeness, chunks.

    Of a complete store every unit is checked (and must be flagged); of an incomplete one the
    units flagged done are checked and the rest counted.

    Args:
        progresses: The store's progress flags and what each unit wrote.

    Returns:
        One line per problem found (empty when the store is whole).
    """
    store = progresses[0].store
    kind = store.kind
    problems: list[str] = []
    checked: list[tuple[Progress, list[int]]] = []
    todo = total = 0
    for progress in progresses:
        flags = progress.read(problems)
        if flags is None:
            continue
        undone = [u for u in range(len(progress.units)) if u >= len(flags) or not flags[u]]
        todo, total = todo + len(undone), total + len(progress.units)
        if undone and store.complete:
            problems.append(f"{progress.flags}: {kind.unit}s {undone[:10]} are not flagged done in a complete cache")
        skip = set() if store.complete else set(undone)
        checked.append((progress, [u for u in range(len(progress.units)) if u not in skip]))
    if not store.complete:
        problems.append(
            f"{store.path} is incomplete ({todo} of {total} {kind.unit}s still to {kind.verb}): "
            f"rerun the same `{kind.command}` command"
        )
    for progress, units in checked:
        for unit in units:
            problems += progress.problems(unit)
    return problems
