"""DataLoader iteration that never leaves worker processes behind.

Every loop that reads batches does it inside `with Batches(loader) as batches:`. On any way out of the
block (the end, an exception in the main process or in a worker, Ctrl-C) the workers are shut down and
reaped before the exception travels on. Without this, an exception's traceback keeps the DataLoader
iterator alive until interpreter exit, where torch's own shutdown is a no-op and multiprocessing's atexit
hook joins workers that wait forever for work (and ignore SIGTERM in training, see `training_worker`):
the run hung after printing its error.
"""

from __future__ import annotations

import signal

from torch.utils.data import DataLoader

from motionmae.errors import UserError


def make_loader(dataset, batch_size: int, num_workers: int, *, sampler=None, collate_fn=None, drop_last: bool = False,
                pin_memory: bool = False, generator=None, train: bool = False) -> DataLoader:
    """A DataLoader without persistent workers (datasets seed clips from their epoch, set before each iterator).
    `train=True` makes workers leave SIGTERM to the main process (see `training_worker`). A streaming dataset
    (`data.shards.ShardDataset`) takes no sampler and is told the batching, so its workers split the epoch
    into whole batches."""
    if hasattr(dataset, "set_batching"):
        if sampler is not None:
            raise ValueError("a streaming dataset orders its samples itself: pass no sampler")
        dataset.set_batching(batch_size, drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory, generator=generator,
                      persistent_workers=False, worker_init_fn=training_worker if train else worker)


def worker(worker_id: int) -> None:
    """Ctrl-C in a worker is a plain KeyboardInterrupt, which torch's worker loop ends quietly (the CLI's own
    handler, inherited through fork, is for the main process)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def training_worker(worker_id: int) -> None:
    """As `worker`; and training workers leave SIGTERM (sent to the whole process group by schedulers) to the main
    process, which saves a checkpoint and then shuts them down through `Batches.close` (which kills them if it must)."""
    worker(worker_id)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Batches:
    """Iterator over a DataLoader's batches; a context manager whose exit reaps the workers.

    A `UserError` raised in a worker reaches the main process with the worker's traceback glued to its message;
    `__next__` keeps only the message, so the CLI prints one line.
    """

    def __init__(self, loader: DataLoader):
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._it)
        except UserError as e:
            raise UserError(worker_message(str(e))) from None

    def __len__(self) -> int:
        return len(self._it)

    def close(self) -> None:
        it, self._it = self._it, iter(())
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # polite: done event, join with a timeout, SIGTERM
        for w in getattr(it, "_workers", ()):
            if w.is_alive():  # a training worker ignores SIGTERM; one stuck in a decode may not answer at all
                w.kill()
                w.join(timeout=10)

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def worker_message(msg: str) -> str:
    """The exception's own message out of torch's 'Caught X in DataLoader worker ... Original Traceback ...' text."""
    if "Original Traceback" not in msg:
        return msg
    last = msg.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
