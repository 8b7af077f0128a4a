"""Training data larger than memory: a Parquet dataset streamed row group by row group.

``ParquetStream`` lists a dataset's files and row groups (from their metadata alone) and
reads them in chunks of rows with polars' Parquet reader (a slice of the file's rows:
polars reads only the row groups it overlaps, straight into its own string layout; Arrow's
``ParquetFile.iter_batches`` and a conversion took 2x as long). The preprocessor is fitted
in one pass over the chunks (``Preprocessor.fit_chunks``). ``StreamedTable`` then plays
``TensorTable``'s part in the training loop: each epoch reads the row groups in a seeded
order, encodes each chunk as it arrives (one chunk ahead, on a thread) and draws batches
through a seeded ``ShuffleBuffer``. Memory holds the model, the buffer and a chunk or two;
never the data.

Under torchrun each rank reads only its own part of the epoch's rows (rank ``r`` of ``N``
takes rows ``[r*T/N, (r+1)*T/N)`` of the epoch's row-group order) and trains batches of its
share of ``batch_size`` rows; every rank knows every other's row counts, so the ranks agree
on the number of steps and on each global batch's size without talking.
"""

from __future__ import annotations

import glob
import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from widedeep.config import StreamConfig
from widedeep.data.batch import Batch
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError, SchemaError
from widedeep.features.preprocessor import Chunk, Preprocessor
from widedeep.tables import PARQUET_SUFFIXES


@dataclass(frozen=True)
class Piece:
    """One row group: of file ``file`` (an index into the stream's files), ``rows`` rows,
    the first being row ``start`` of its file."""

    file: int
    row_group: int
    rows: int
    start: int


def parquet_files(spec: str | Path) -> list[Path]:
    """The Parquet files ``spec`` names: a file, a folder (searched recursively, so
    partitioned layouts are found; a partition key that lives only in a folder name is not a
    column) or a glob pattern; sorted, never empty."""
    text = str(spec)
    path = Path(text)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in PARQUET_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise SchemaError(f"{spec}: no such file or folder")
    if not files:
        raise SchemaError(f"{spec}: no Parquet files there")
    other = [p for p in files if p.suffix.lower() not in PARQUET_SUFFIXES]
    if other:
        raise SchemaError(
            f"{spec}: streaming reads Parquet only, got {other[0]} (convert CSV to Parquet "
            "first, e.g. polars.scan_csv(...).sink_parquet(...))"
        )
    return files


class ParquetStream:
    """The row groups of a Parquet dataset, read in chunks of at most ``chunk_rows`` rows."""

    def __init__(self, spec: str | Path, columns: Sequence[str], chunk_rows: int) -> None:
        self.spec = str(spec)
        self.columns = list(columns)
        self.chunk_rows = chunk_rows
        self.files = parquet_files(spec)
        pieces: list[Piece] = []
        for index, file in enumerate(self.files):
            try:
                with pq.ParquetFile(file) as parquet:
                    names = parquet.schema_arrow.names
                    metadata = parquet.metadata
                    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            except (OSError, ValueError, pa.ArrowException) as error:
                raise SchemaError(f"{file}: cannot be read as Parquet: {error}") from None
            missing = [c for c in self.columns if c not in names]
            if missing:
                listed = ", ".join(f"'{c}'" for c in missing)
                raise SchemaError(
                    f"{file}: missing column{'s' if len(missing) > 1 else ''} {listed} "
                    f"(the file has {len(names)} columns: {', '.join(names[:20])})"
                )
            start = 0
            for group, rows in enumerate(sizes):
                if rows:
                    pieces.append(Piece(index, group, rows, start))
                start += rows
        if not pieces:
            raise SchemaError(f"{self.spec}: the table is empty (0 rows)")
        self.pieces = tuple(pieces)
        self.rows = sum(p.rows for p in pieces)

    def fingerprint(self) -> str:
        """SHA-256 of the files' paths, sizes, modification times and row groups (a resumed
        run checks that it reads the same data; the files are not read)."""
        digest = hashlib.sha256()
        for file in self.files:
            stat = file.stat()
            digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        for piece in self.pieces:
            digest.update(f"{piece.file}/{piece.row_group}/{piece.rows};".encode())
        return digest.hexdigest()

    def chunks(self, pieces: Iterable[tuple[Piece, int, int]] | None = None) -> Iterator[Chunk]:
        """The rows of ``pieces`` in order, as chunks; each item is a piece and the range of
        its rows to read (default: every piece, whole)."""
        if pieces is None:
            pieces = ((p, 0, p.rows) for p in self.pieces)
        for piece, first, stop in pieces:
            file = self.files[piece.file]
            scan = pl.scan_parquet(file).select(self.columns)
            for low in range(first, stop, self.chunk_rows):
                rows = min(stop, low + self.chunk_rows) - low
                try:
                    frame = scan.slice(piece.start + low, rows).collect()
                except (pl.exceptions.PolarsError, OSError) as error:
                    raise SchemaError(
                        f"{file}: cannot read row group {piece.row_group}: {error}"
                    ) from None
                yield Chunk(frame, str(file), piece.start + low)


def fit_stream(preprocessor: Preprocessor, stream: ParquetStream) -> Preprocessor:
    """Fit ``preprocessor`` in one pass over ``stream``."""
    return preprocessor.fit_chunks(prefetch(stream.chunks()), stream.spec)


def encode_stream(preprocessor: Preprocessor, stream: ParquetStream) -> TensorTable:
    """Every row of ``stream`` encoded by the fitted ``preprocessor`` (labels included), in
    file and row order: one table, written chunk by chunk, so memory never holds the raw
    table whole (``data.stream.keep_encoded``)."""
    table: TensorTable | None = None
    at = 0
    for chunk in prefetch(stream.chunks()):
        encoded = TensorTable.from_encoded(preprocessor.transform_chunk(chunk, with_labels=True))
        if table is None:
            table = TensorTable.empty_like(encoded, stream.rows)
        table.write(slice(at, at + len(encoded)), encoded)
        at += len(encoded)
    assert table is not None and at == stream.rows  # a stream has rows (checked when listed)
    return table


class ShuffleBuffer:
    """Rows held back so that batches mix rows from far apart in the stream: each arriving
    row takes the place of a row drawn at random from the buffer, which leaves."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self._rows: TensorTable | None = None
        self._held = 0

    def push(self, table: TensorTable) -> Iterator[TensorTable]:
        """Take ``table``'s rows in; yield the rows they push out (in random order)."""
        if self._rows is None:
            self._rows = TensorTable.empty_like(table, self.capacity)
        start = 0
        free = self.capacity - self._held
        if free:
            start = min(free, len(table))
            self._rows.write(slice(self._held, self._held + start), table.part(0, start))
            self._held += start
        while start < len(table):
            stop = min(start + self.capacity, len(table))
            drawn = torch.randperm(self.capacity, generator=self.generator)[: stop - start]
            leaving = self._rows.rows(drawn)
            self._rows.write(drawn, table.part(start, stop))
            yield leaving
            start = stop

    def drain(self) -> Iterator[TensorTable]:
        """The rows still held, in random order; the buffer is empty afterwards."""
        if self._rows is not None and self._held:
            order = torch.randperm(self._held, generator=self.generator)
            yield self._rows.rows(order)
        self._rows, self._held = None, 0


def cut_batches(tables: Iterable[TensorTable], batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of ``batch_size`` rows from a stream of tables (the last one
    may be shorter)."""
    pending: list[TensorTable] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += len(table)
        if held < batch_size:
            continue
        joined = TensorTable.concat(pending)
        full = held // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield joined.slice(start, start + batch_size)
        pending = [joined.part(full, held)] if full < held else []
        held -= full
    if held:
        yield TensorTable.concat(pending).slice(0, held)


def share(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s range ``[start, stop)`` of ``total`` items split over ``world`` ranks
    (sizes differ by at most one)."""
    return rank * total // world, (rank + 1) * total // world


class StreamedTable:
    """A training table streamed from Parquet each epoch, encoded chunk by chunk."""

    def __init__(
        self, stream: ParquetStream, preprocessor: Preprocessor, settings: StreamConfig
    ) -> None:
        self.stream = stream
        self.preprocessor = preprocessor
        self.settings = settings

    def __len__(self) -> int:
        return self.stream.rows

    def steps(self, batch_size: int, world: int = 1) -> int:
        """Batches per epoch on every rank (the most any rank needs for its rows)."""
        _check_world(batch_size, world)
        counts = [_rank_rows(self.stream.rows, batch_size, r, world) for r in range(world)]
        return max(-(-rows // size) for rows, size in counts)

    def global_rows(self, step: int, batch_size: int, world: int = 1) -> int:
        """Rows of the ``step``-th (1-based) global batch, summed over the ranks."""
        total = 0
        for r in range(world):
            rows, size = _rank_rows(self.stream.rows, batch_size, r, world)
            total += max(0, min(size, rows - (step - 1) * size))
        return total

    def batches(
        self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        """This rank's batches of one epoch: ``steps()`` of them, the ones past its rows
        empty. The row-group order and the buffer's seed come from ``generator`` (two
        draws, the same on every rank); the buffer's draws from a generator of its own."""
        _check_world(batch_size, world)
        order = torch.randperm(len(self.stream.pieces), generator=generator).tolist()
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        buffer_generator = torch.Generator()
        buffer_generator.manual_seed(seed + rank)
        start, stop = share(self.stream.rows, rank, world)
        ranges: list[tuple[Piece, int, int]] = []
        at = 0
        for index in order:
            piece = self.stream.pieces[index]
            low, high = max(start, at), min(stop, at + piece.rows)
            if low < high:
                ranges.append((piece, low - at, high - at))
            at += piece.rows
        local_batch = share(batch_size, rank, world)
        size = local_batch[1] - local_batch[0]
        buffer = ShuffleBuffer(self.settings.shuffle_buffer, buffer_generator)

        def shuffled() -> Iterator[TensorTable]:
            for encoded in prefetch(self._encoded(ranges)):
                yield from buffer.push(encoded)
            yield from buffer.drain()

        produced = 0
        last: Batch | None = None
        for batch in cut_batches(shuffled(), size):
            produced += 1
            last = batch
            yield batch
        if last is None:  # this rank has no rows this epoch: a zero-row batch of the right shape
            first = next(self._encoded((p, 0, 1) for p in self.stream.pieces[:1]))
            last = first.slice(0, 0)
        for _ in range(self.steps(batch_size, world) - produced):
            yield _empty(last)

    def _encoded(self, ranges: Iterable[tuple[Piece, int, int]]) -> Iterator[TensorTable]:
        for chunk in self.stream.chunks(ranges):
            encoded = self.preprocessor.transform_chunk(chunk, with_labels=True)
            yield TensorTable.from_encoded(encoded)


def _rank_rows(total: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """(rows, batch rows) of rank ``rank`` in an epoch of ``total`` rows."""
    start, stop = share(total, rank, world)
    low, high = share(batch_size, rank, world)
    return stop - start, high - low


def _check_world(batch_size: int, world: int) -> None:
    if batch_size < world:
        raise ConfigError(
            f"train.batch_size is {batch_size}, below the {world} processes: a streamed "
            "table gives every process a share of each batch, so give at least one row each"
        )


def _empty(batch: Batch) -> Batch:
    return Batch(
        ids=batch.ids[:0],
        multi_ids=tuple(m[:0] for m in batch.multi_ids),
        dense=None if batch.dense is None else batch.dense[:0],
        labels=None if batch.labels is None else batch.labels[:0],
    )


T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced ``depth`` ahead on a thread (reading and encoding Parquet release
    the GIL, so the next chunk is made while the current one trains). An error in the
    thread is raised here, in order; closing the iterator stops the thread."""
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # e.g. a generator holding an open Parquet file

    worker = threading.Thread(target=produce, name="widedeep-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
