"""The per-record work of `build-data`, run in worker processes, and the ordered pool that runs it.

`process_record` is a pure function of the record and the settings: metadata checks, read the bytes,
header checks, decode, crop, resize, encode, hash. Records go to workers in fixed chunks and come back
in order, so the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from PIL import Image

from snapdistill.data import images as im
from snapdistill.data.filters import RECORD_CHECKS, SIZE_CHECKS, FilterConfig, first_reason
from snapdistill.data.sources.base import PILRef, Record, ToyRef


@dataclass(frozen=True)
class ProcessConfig:
    resolution: int
    quality: int
    reduced: bool
    filters: FilterConfig


@dataclass
class Outcome:
    """What a worker sends back for one record: the JPEG, or why there is none."""

    reason: str | None = None          # set when the record is skipped
    detail: str = ""
    jpg: bytes | None = None
    sha256: str = ""                   # of the encoded output: equal pixels give equal JPEG bytes
    width: int = 0                     # original size
    height: int = 0
    repair: str | None = None          # e.g. "cmyk_converted"


def _load(rec: Record) -> tuple[bytes | None, object]:
    """(bytes, None) for files and tar members, (None, PIL image) for in-memory images."""
    if isinstance(rec.image, (PILRef, ToyRef)):
        return None, rec.image.load()
    return rec.image.load(), None


def _pixels(rec: Record, cfg: ProcessConfig, out: Outcome):
    """Decoded BGR pixels, or None when the original size fails a filter (`out.reason` says which)."""
    data, pil = _load(rec)
    header = None
    if pil is not None:
        out.width, out.height = pil.size
    else:
        header = im.probe(data)
        out.width, out.height, out.repair = header.width, header.height, im.REPAIRS.get(header.mode)
    out.reason = first_reason(SIZE_CHECKS, out.width, out.height, cfg.filters)
    if out.reason == "too_large":
        out.detail = f"{out.width}x{out.height} pixels, above --max-pixels {cfg.filters.max_pixels}"
    if out.reason:
        return None
    return im.pil_to_bgr(pil) if header is None else im.decode_bgr(data, header, cfg.resolution, reduced=cfg.reduced)


@contextlib.contextmanager
def _pil_bomb_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit set to `max_pixels`, its warning raised as an error."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def process_record(rec: Record, cfg: ProcessConfig) -> Outcome:
    """Filter, decode and re-encode one record; bad input becomes a reason, never an exception."""
    with _pil_bomb_limit(cfg.filters.max_pixels):
        return _process_record(rec, cfg)


def _process_record(rec: Record, cfg: ProcessConfig) -> Outcome:
    if rec.fault:
        return Outcome(reason=rec.fault, detail=rec.detail)
    reason = first_reason(RECORD_CHECKS, rec, cfg.filters)
    if reason:
        return Outcome(reason=reason)
    out = Outcome()
    try:
        pixels = _pixels(rec, cfg, out)
        if pixels is None:
            out.repair = None
            return out
        out.jpg = im.encode_jpeg(im.square_resize(pixels, cfg.resolution), cfg.quality)
    except FileNotFoundError as e:
        return Outcome(reason="missing_file", detail=str(e.filename or e))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own size limit
        return Outcome(reason="too_large", detail=" ".join(str(e).split()), width=out.width, height=out.height)
    except Exception as e:  # one broken image must not stop a long run: it is counted and listed instead
        return Outcome(reason="undecodable", detail=f"{type(e).__name__}: {e}", width=out.width, height=out.height)
    out.sha256 = hashlib.sha256(out.jpg).hexdigest()
    return out


def process_chunk(chunk: list, cfg: ProcessConfig) -> list[Outcome]:
    """Process a chunk of stream entries, whose last field is the record."""
    return [process_record(entry[-1], cfg) for entry in chunk]


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """End this worker when the process that started the pool dies, even by SIGKILL (a worker stuck
    reading a file would otherwise live on): Linux's parent-death signal, else a watchdog thread."""
    import ctypes
    import ctypes.util
    import os
    import signal
    import sys
    import time

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
                # The signal follows the worker's own parent (the forkserver, with that start method), which
                # ends with the pool's process; check the pool's process once for a death before the prctl.
                if not _pid_alive(parent):
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch(ppid: int = os.getppid()) -> None:
        while os.getppid() == ppid and _pid_alive(parent):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_worker(parent: int | None = None) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend
    if parent is not None:
        _die_with_parent(parent)


def start_method() -> str:
    """fork starts workers in milliseconds, but copying a process that runs other threads can deadlock
    the copy; then use forkserver (clean workers, ~0.4 s to start)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator:
    """A process pool of `workers`, or None (work in this process) for one worker.

    Open it before starting any thread (the progress bar) or loading torch models, so the fast start
    method can be used.
    """
    if workers <= 1:
        _init_worker()
        yield None
        return
    import os

    with multiprocessing.get_context(start_method()).Pool(workers, initializer=_init_worker,
                                                           initargs=(os.getpid(),)) as pool:
        yield pool


def ordered_map(fn: Callable, chunks: Iterable, pool, workers: int, args: tuple = ()) -> Iterator[tuple]:
    """(chunk, `fn(chunk, *args)`) for each chunk, in order, in `pool` (None: in this process).

    At most 2 chunks per worker are in flight, so a huge input never piles up in memory (unlike
    `Pool.imap`, whose feeder thread reads its whole input ahead).
    """
    if pool is None:
        yield from ((chunk, fn(chunk, *args)) for chunk in chunks)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(fn, (chunk, *args))))
        if len(pending) >= 2 * workers:
            done, result = pending.popleft()
            yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()
