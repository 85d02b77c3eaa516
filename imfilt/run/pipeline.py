"""One job: read its input, compute each output, write each file whole (run_job).

An apply of an image that fits goes through the streamed runner (tiled.run_outputs) in bands;
the rest (spectrum, lowpass, --montage, a Dask worker's job) is read whole, computed by the
operation and written through the same sinks (tiled.write_whole). A record per output says
what was made, for --json and the report.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import tiled, tiled_fft
from .distributed import check_stop, on_dask_worker
from ..engine.engine import auto_engine, get_engine
from ..errors import InputError, Interrupted, shown
from ..image.io import (Decoded, Loaded, atomic_write, check_pixels, decode, encode, fitting_depth,
                        pillow_limit, to_storage, write_image)
from ..image.tiles import Source, image_shape
from .planning import Job, Output, banded_memory, bands_pay, one_band, stdin_shape, stream_groups

# The signals a shell, `timeout`, or a job scheduler sends to end a program.
ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                       if hasattr(signal, name))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _WhileWriting:
    """Where an ending signal waits (batch's handler asks): an output is written and counted whole.

    Only the main thread's handler looks at it; on leaving, a signal that came meanwhile is
    raised as Interrupted.
    """

    active = False
    pending: int | None = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # jobs on threads are not shielded
            self.active = True

    def __exit__(self, kind, value, traceback):
        if threading.current_thread() is not threading.main_thread():
            return
        self.active = False
        if self.pending is not None:  # the signal outranks an error of this output
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


WHILE_WRITING = _WhileWriting()


def run_job(job: Job, records: list[dict] | None = None, progress: tiled.Progress | None = None) -> list[dict]:
    """Read one input, compute each output, write each file atomically; one record per output.

    Records are appended to ``records`` as outputs are written, so a run interrupted in the
    middle of a job still counts the outputs it finished. An InputError (bad image, output
    over its input) fails this job only. ``progress(fraction)`` is told the share of the job
    done: as each output is written and, for a streamed output, as its windows are.
    """
    settings = job.settings
    records = [] if records is None else records
    records.extend(_record(job, o, skipped=True) for o in job.all_outputs if o.skip)
    montage = job.montage if job.montage and not job.montage.skip else None
    todo = [o for o in job.outputs if not o.skip]
    if not todo and not montage:
        return records
    if job.refused:
        raise InputError(job.refused)
    for file in (f for o in todo + [montage] * bool(montage) for f in o.files):
        if job.source != "-" and _same_file(file, job.source):  # a link made since planning
            raise InputError(f"{shown(job.source)}: the output {shown(file)} is the input itself; not overwritten")
    if job.tiled:
        if montage:
            raise InputError(f"{job.source}: too large for memory (see --memory), and --montage needs the maps "
                             "of images that fit in memory")
        for output in todo:
            tiled.check_tiled_output(job.source, output)
        shape = image_shape(job.source) or (0, 0, 0)
        height, width, _ = shape
        try:
            check_pixels(width, height, settings.max_pixels or pillow_limit())
        except InputError as exc:
            raise InputError(f"{shown(job.source)}: {exc}") from None
        groups = stream_groups(todo, shape, settings.memory)
        for i, group in enumerate(groups):  # not shielded from signals: a streamed output can take minutes
            part = tiled.progress_part(progress, i / len(groups), 1 / len(groups))
            _streamed(job, group, records, part)
        return records
    if job.source == "-" and job.data is not None and not montage:  # what planning could not know: its size
        shape = stdin_shape(job.data, settings)
        job = replace(job, shape=shape, banded=bands_pay(shape, todo, True, settings))
    if job.banded and not on_dask_worker():
        if _in_rows(job):
            try:
                _streamed(job, todo, records, progress, whole=True)
                return records
            except InputError:
                pass  # what does not stream (an interlaced PNG, a planar TIFF) or fails: io's decoders decide
        _streamed(job, todo, records, progress, whole=True, source=lambda: _decoded_source(job))
        return records
    loaded = _read_whole(job)
    colours = loaded.pixels.shape[2] - loaded.alpha
    for output in job.outputs:  # e.g. a 4-D bank for another number of channels: before any output is written
        getattr(output.op, "check", lambda channels: None)(colours)
    sheet = _Sheet(job, montage, loaded) if montage else None
    steps = len(job.outputs if montage else todo) + bool(sheet)
    for step, output in enumerate(job.outputs if montage else todo, 1):  # a montage shows the maps of skipped outputs too
        start = time.perf_counter()
        engine = _engine_for(settings, output.op, loaded.pixels.shape[0] * loaded.pixels.shape[1])
        result = output.op.run(loaded, engine)
        scale = result.auto_scale if settings.scale == "auto" else settings.scale
        if sheet:
            sheet.add(result, scale)
        if output.skip:
            continue
        check_stop()  # on Dask: not after the client was interrupted
        with WHILE_WRITING:  # a signal now waits until this output is written and counted
            # the sinks of the streamed path: {channel} (--split-channels) is a file per colour channel
            tiled.write_whole(output.path, result, source_depth=loaded.depth, depth=settings.depth, scale=scale,
                              stdout_suffix=settings.stdout_suffix, split=settings.split_channels)
            for name, path in output.extras:  # e.g. the mask: its values as they are, grey, clipped
                tiled.write_whole(path, tiled.Result(result.extras[name], False, "clip"), source_depth=8, depth=None,
                                  scale="clip")
            seconds = time.perf_counter() - start
            records.append(_record(job, output, result=result, engine=engine.name, seconds=seconds))
        if progress is not None and step < steps:
            progress(step / steps)
    if sheet:
        check_stop()
        with WHILE_WRITING:
            records.append(sheet.write(engine.name))
    return records


def _in_rows(job: Job) -> bool:
    """Whether the input is decoded in bands of rows (BANDED_PIXELS), where its format allows."""
    return job.shape is not None and not one_band(job.shape)


def _read_whole(job: Job) -> Loaded:
    """The input, whole. From a megapixel, through the streamed path's source (decoded in bands
    into one float32 array: a 4096x4096 PNG in 0.5 s, where a whole decode and conversion take
    1.0 s); io's decoders read what the source cannot, and have the last word on errors."""
    if _in_rows(job):
        try:
            return tiled.read_whole(job.source, job.data)
        except InputError:
            pass  # an interlaced PNG, a planar TIFF, a damaged file: io's decoders decide
    return _decoded(job).loaded()


def _decoded(job: Job) -> Decoded:
    """The input decoded whole by io's decoders: its stored samples (every format; their errors are the last word)."""
    return decode(job.data if job.source == "-" else job.source, max_pixels=job.settings.max_pixels,
                  name=_name_of(job), shape=job.shape)


def _decoded_source(job: Job) -> Source:
    """The input decoded whole, as a source whose windows the runner converts one by one."""
    decoded = _decoded(job)
    return Source(_name_of(job), decoded.stored, decoded.depth)


def _name_of(job: Job) -> str:
    return "<stdin>" if job.source == "-" else job.source


def _engine_for(settings, op, pixels: int):
    """The engine named by --engine; auto decides per operation and image size (engine.prefers_gpu)."""
    if settings.engine == "auto":
        return auto_engine(op.work, pixels, settings.threads)
    return get_engine(settings.engine, settings.threads)


class _Sheet:
    """--montage: each map scaled as its own output is, fitted to the grid as it comes (montage.py).

    Image formats keep the maps as the integers their files store (a quarter of float32's memory)
    and encode the grid as it is; float outputs (.npy, .zarr, 32-bit) hold the values themselves.
    """

    def __init__(self, job: Job, output: Output, loaded: Loaded):
        from .. import montage

        self.job, self.output, self.montage = job, output, montage
        height, width = loaded.pixels.shape[:2]
        self.suffix = Path(output.path).suffix.lower()
        self.depth = job.settings.depth or fitting_depth(loaded.depth, self.suffix)
        self.stored = self.depth != 32 and self.suffix not in (".npy", ".zarr")
        self.grid = montage.layout([o.op.output_shape(height, width) for o in job.outputs])
        self.maps: list[np.ndarray] = []
        self.start = time.perf_counter()

    def add(self, result, scale: str) -> None:
        colour = result.pixels[..., :-1] if result.alpha else result.pixels
        self.maps.append(self.montage.fit(to_storage(colour, self.depth, scale) if self.stored else colour, self.grid))

    def write(self, engine: str) -> dict:
        picture = self.montage.compose(self.maps, self.grid)
        threads = self.job.settings.threads or os.cpu_count() or 1
        if self.stored:
            atomic_write(self.output.path, lambda f: encode(picture, self.suffix, False, f, threads))
        else:
            write_image(self.output.path, picture, depth=32 if self.suffix == ".npy" else self.depth, scale="clip",
                        threads=threads)
        record = _record(self.job, self.output)
        record.update(self.grid.facts(len(self.maps)), engine=engine, shape=list(picture.shape),
                      seconds=round(time.perf_counter() - self.start, 4))
        return record


def _streamed(job: Job, outputs: list[Output], records: list[dict], progress: tiled.Progress | None = None,
              whole: bool = False, source: Callable[[], Source] | None = None) -> None:
    """Outputs streamed window by window, their records added to ``records``: one alone, or
    several from one decode (stream_groups); ``whole``: an image that fits, recorded as a whole one is,
    read from ``source()`` where given (else its file, through tiles.open_source)."""
    settings, start = job.settings, time.perf_counter()
    # an image that fits goes in bands of a fixed budget per output: larger ones only take more memory
    memory = banded_memory(settings, len(outputs)) if whole else settings.memory
    pixels = (job.shape[0] * job.shape[1]) if job.shape else 0
    engines = [_engine_for(settings, output.op, pixels) for output in outputs]
    before = [_identity(output.path, settings.split_channels) for output in outputs]
    made = [_record(job, output) for output in outputs]
    # standard output cannot be taken back: a signal waits until it is written and counted, as on
    # the whole-image path (a file is renamed into place whole, or not at all)
    shield = WHILE_WRITING if any(output.path == "-" for output in outputs) else contextlib.nullcontext()
    with shield:
        try:
            if len(outputs) > 1 or whole:
                facts = tiled.run_outputs(job.source, outputs, depth=settings.depth, scale=settings.scale, memory=memory,
                                          engines=engines, progress=progress, whole=whole,
                                          stdout_suffix=settings.stdout_suffix, data=job.data,
                                          split=settings.split_channels, source=source,
                                          one_band=whole and not _in_rows(job))
            else:
                apply = functools.partial(tiled.run_output, split=settings.split_channels)  # apply's option only
                run_output = {"windows": apply, "fft": tiled_fft.run_output}[outputs[0].op.runner]
                facts = [run_output(job.source, outputs[0], depth=settings.depth, scale=settings.scale, memory=memory,
                                    engine=engines[0], temp_dir=settings.temp_dir, progress=progress)]
            seconds = round(time.perf_counter() - start, 4)  # outputs made together: the time they took together
            for record, fact, engine in zip(made, facts, engines):
                if whole:  # the record of an image that fits: the keys, in the order, of the whole path's (_record)
                    kept = {k: v for k, v in fact.items() if k not in ("tiled", "window", "shape")}
                    record.update(kept, engine=engine.name, seconds=seconds, shape=fact["shape"])
                else:
                    record.update(fact, engine=engine.name, seconds=seconds)
                records.append(record)
        except KeyboardInterrupt:
            # a signal is not held for a streamed output (it can take minutes): one that came after
            # an output was renamed into place, before it was counted, still counts it
            for record, output, was in zip(made, outputs, before):
                if all(r is not record for r in records) and _identity(output.path, settings.split_channels) != was:
                    records.append(record)
            raise


def _identity(path: str, split: bool = False) -> tuple[int, int] | None:
    """What tells a file renamed over ``path`` from the one that was there (os.replace makes a new inode)."""
    if path == "-":
        return None  # standard output
    if split:  # --split-channels: its files' (one renamed is a change)
        return tuple(sorted(filter(None, map(_identity, glob.glob(glob.escape(path).replace("{channel}", "*"))))))
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def json_line(record: dict) -> str:
    """A record as one line of JSON, as --json and --dry-run --json print it: names as they are
    (ensure_ascii=False), but every control character escaped, C1 ones too (\\u009b would be a
    terminal's CSI), and a name that is not UTF-8 as \\udcXX escapes (os.fsencode gives its bytes back)."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_C1 = re.compile("[\x7f-\x9f\u2028\u2029]")


def _record(job: Job, output: Output, *, skipped: bool = False, result=None, engine=None, seconds=0.0) -> dict:
    record = {"input": job.source, "output": output.path, "op": output.op.name, "skipped": skipped}
    record.update({name: path for name, path in output.extras})
    if result is not None:
        record.update(result.facts)
        record.update(engine=engine, seconds=round(seconds, 4), shape=list(result.pixels.shape))
    return record
