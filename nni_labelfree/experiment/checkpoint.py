"""Resumable search checkpoints: atomic writes, torn-file detection, newest-valid lookup, a Lightning callback.

A search writes ``checkpoints/search_epoch{N:04d}.ckpt`` at the end of every epoch: a plain Lightning checkpoint
(``trainer.fit(ckpt_path=...)`` resumes from it) holding the whole search state (supernet weights, optimiser and
LR-scheduler state, loop counters, callback states such as the metrics history, and whatever the strategy's module
adds in ``on_save_checkpoint``). Files are written to a temporary name, flushed to disk and renamed over the target
(``os.replace``), so a kill never leaves a half-written file under a checkpoint name; a file damaged some other way
(a full disk, a copy cut short) fails to load, and :func:`newest_valid_checkpoint` falls back to the previous one
with a warning. Every checkpoint loads with ``torch.load(path, weights_only=True)``: only tensors and plain Python
values go in.

Writing overlaps training: training waits only while Lightning gathers the state and its tensors are copied (later
steps change them in place); one background thread then serialises, writes, fsyncs, renames and prunes. A new save
first waits for the previous write, and the end of ``fit`` waits for the last one. The file under a checkpoint name
is always complete.

Why the end of the epoch: Lightning's loops resume exactly from an ``on_train_epoch_end`` checkpoint (the epoch-level
LR-scheduler step has already happened by then), whereas a checkpoint taken at the start of the next epoch makes
Lightning 2.6 skip most of that epoch on resume (checked on a toy model: 17 of 20 optimiser steps).
"""
from __future__ import annotations

import io
import logging
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Collection, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

__all__ = ['CheckpointError', 'atomic_save', 'load_checkpoint', 'checkpoint_path', 'list_checkpoints',
           'newest_valid_checkpoint', 'prune_checkpoints', 'remove_checkpoints', 'remove_stale_temporaries',
           'checkpoint_metadata', 'resume_candidate', 'changed_settings', 'AtomicCheckpointIO',
           'ResumableCheckpoint', 'METADATA_KEY']

_logger = logging.getLogger(__name__)

METADATA_KEY = 'nni_labelfree'          # top-level checkpoint key holding the search's own metadata
_NAME = re.compile(r'^search_epoch(\d+)\.ckpt$')
_TMP_SUFFIX = '.tmp'


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (torn, truncated, not a checkpoint, or not ``weights_only``-safe)."""


# -- files ------------------------------------------------------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _serialise(obj: Any) -> memoryview:
    # One torch.save into memory, then one write: faster than torch.save's many small writes to a file.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _copy_tensors(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples replaced by a detached copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((key, _copy_tensors(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(_copy_tensors(value) for value in obj)
    return obj


def _write_atomically(data: memoryview | bytes, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}{_TMP_SUFFIX}')
    try:
        with open(tmp, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, ``fsync`` it, then ``os.replace`` it onto ``path``.

    A kill at any moment leaves either the old file or the new one under ``path``, never a mix; at worst a stale
    ``.<name>.<pid>.tmp`` file remains, which :func:`remove_stale_temporaries` clears.
    """
    _write_atomically(_serialise(obj), Path(path))


def load_checkpoint(path: str | Path) -> dict:
    """Load a search checkpoint with ``weights_only=True`` on the CPU; :class:`CheckpointError` if unreadable."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torn zip, pickle error, unsafe global: all mean "do not resume from this file"
        reason = (str(err).strip().splitlines() or [''])[0][:200]
        raise CheckpointError(f'{path} cannot be read ({type(err).__name__}: {reason}); it is probably truncated '
                              'by a crash or a full disk.') from err
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint or 'loops' not in checkpoint:
        raise CheckpointError(f'{path} is not a resumable Lightning checkpoint (no state_dict/loops).')
    return checkpoint


def checkpoint_path(directory: str | Path, epoch: int) -> Path:
    """Where the checkpoint taken after ``epoch`` completed epochs lives."""
    return Path(directory) / f'search_epoch{epoch:04d}.ckpt'


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(completed epochs, path)`` of every search checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def newest_valid_checkpoint(directory: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads, with its contents; unreadable newer ones are skipped
    with a warning. ``None`` when there is none."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            _logger.warning('Skipping an unreadable checkpoint, falling back to the previous one: %s', err)
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` search checkpoints; returns the deleted paths."""
    doomed = [path for _, path in list_checkpoints(directory)[:-keep]] if keep > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_checkpoints(directory: str | Path) -> int:
    """Delete every search checkpoint in ``directory`` (a search started over); returns how many."""
    found = list_checkpoints(directory)
    for _, path in found:
        path.unlink(missing_ok=True)
    return len(found)


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete temporary files left by a write that was killed; returns how many."""
    directory = Path(directory)
    stale = [p for p in directory.glob(f'.*{_TMP_SUFFIX}')] if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def checkpoint_metadata(checkpoint: Mapping[str, Any]) -> dict:
    """The search metadata :class:`ResumableCheckpoint` stored in a loaded checkpoint (``{}`` if none)."""
    return dict(checkpoint.get(METADATA_KEY) or {})


def resume_candidate(directory: str | Path, resume: bool, *, owner: bool = True,
                     logger: logging.Logger = _logger, what: str = 'previous checkpoints') -> tuple[Path, dict] | None:
    """The newest readable checkpoint of ``directory`` to continue from, or None to start afresh.

    The ``owner`` (rank 0 of a distributed run) first deletes stale temporaries; with ``resume`` false it deletes
    the old checkpoints (logging ``'resume=false: deleted the {what} in {directory}.'`` on ``logger``) and the
    result is None. Checking that the checkpoint belongs to this run is the caller's.
    """
    if owner:
        remove_stale_temporaries(directory)
    if not resume:
        if owner and remove_checkpoints(directory):
            logger.info('resume=false: deleted the %s in %s.', what, directory)
        return None
    return newest_valid_checkpoint(directory)


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], free: Collection[str]) -> str:
    """``'key: old -> new, ...'`` (sorted) for the settings of ``current`` that ``saved`` has otherwise, ignoring
    the keys in ``free``; ``''`` when none changed (a checkpoint may then be resumed)."""
    changed = {k: (saved.get(k), v) for k, v in current.items() if k not in free and saved.get(k) != v}
    return ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in sorted(changed.items()))


# -- Lightning --------------------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O writing like :func:`atomic_save`, in a background thread by default.

    Pass it as ``Trainer(plugins=[AtomicCheckpointIO()])``. ``save_checkpoint`` copies the checkpoint's tensors
    before it returns (training goes on changing the originals) and leaves serialisation, write, fsync and rename to
    one writer thread; it first waits for the previous write, and :meth:`teardown` (end of ``fit``) waits for the
    last one, so a failed write surfaces as an exception. ``storage_options={'keep': n}`` prunes the folder's
    search checkpoints to the newest ``n`` once the file is in place. Loading stays Lightning's own, so
    ``trainer.fit(ckpt_path=..., weights_only=True)`` works unchanged.

    Parameters
    ----------
    background
        Write in a background thread (``False``: write before ``save_checkpoint`` returns).
    """

    def __init__(self, background: bool = True) -> None:
        super().__init__()
        self.background = background
        self._executor: ThreadPoolExecutor | None = None  # started at the first save, stopped by teardown
        self._pending: Future | None = None
        self.write_seconds: list[float] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        options = dict(storage_options or {})
        keep = options.pop('keep', None)
        if options:
            raise TypeError(f'AtomicCheckpointIO takes only storage_options={{"keep": n}}, got {sorted(options)}.')
        self.wait()
        if not self.background:
            self._write(checkpoint, Path(path), keep)
            return
        snapshot = _copy_tensors(checkpoint)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix='checkpoint-writer')
        self._pending = self._executor.submit(self._write, snapshot, Path(path), keep)

    def _write(self, checkpoint: dict[str, Any], path: Path, keep: int | None) -> None:
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(_serialise(checkpoint), path)
        if keep:
            prune_checkpoints(path.parent, keep)
        self.write_seconds.append(time.perf_counter() - started)

    def wait(self) -> None:
        """Block until the last background write is on disk; re-raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


class ResumableCheckpoint(Checkpoint):
    """Write a resumable checkpoint at the end of every training epoch and keep the newest ``keep``.

    A ``Checkpoint`` subclass, so Lightning runs it after the other callbacks (the metrics history of the epoch is
    in the file) and NNI's ``OneShotStrategy.state_dict()`` finds :attr:`last_model_path`. Needs
    ``Trainer(enable_checkpointing=True, plugins=[AtomicCheckpointIO()])``; Lightning runs it on every rank and
    writes on global rank 0 only. :attr:`save_seconds` is the time training waited for each save.

    Parameters
    ----------
    directory
        Folder of the ``search_epoch{N}.ckpt`` files.
    keep
        How many checkpoints to keep (at least 1; two survive a torn newest file).
    metadata
        Plain values stored under :data:`METADATA_KEY` (for example the resolved search configuration), so a
        resumed run can check that it continues the same search.
    """

    def __init__(self, directory: str | Path, keep: int = 2, metadata: Mapping[str, Any] | None = None):
        if keep < 1:
            raise ValueError(f'ResumableCheckpoint keep must be at least 1, got {keep}.')
        self.directory, self.keep = Path(directory), int(keep)
        self.metadata = dict(metadata or {})
        self.last_model_path = ''
        self.save_seconds: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            raise TypeError('ResumableCheckpoint writes through AtomicCheckpointIO, but the trainer uses '
                            f'{type(trainer.strategy.checkpoint_io).__name__}. Build the Trainer with '
                            'plugins=[AtomicCheckpointIO()].')

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        path = checkpoint_path(self.directory, trainer.current_epoch + 1)
        # weights_only=False: the full training state; keep: pruned by the writer once the new file is in place.
        trainer.save_checkpoint(path, weights_only=False, storage_options={'keep': self.keep})
        self.last_model_path = str(path)
        self.save_seconds.append(time.perf_counter() - started)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[METADATA_KEY] = dict(self.metadata)
