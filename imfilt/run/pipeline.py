"""Inputs -> jobs -> outputs: planning, running (here, in worker processes or on Dask), reporting.

Planning happens in the calling process and catches what would make the whole run wrong
(name clashes, unknown formats) before any image is read. A job is one input and the
outputs made from it; it is plain data, so it runs the same in a worker or on a Dask cluster.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import tiled, tiled_fft
from .distributed import check_stop, on_dask_worker
from ..engine.engine import auto_engine, get_engine
from ..errors import InputError, Interrupted, Stopped, UsageError, shown
from ..files import take_abandoned
from ..image.io import (FORMATS, Decoded, Loaded, atomic_write, check_output_format, check_output_size, check_pixels,
                        decode, encode, fitting_depth, pillow_limit, remove_tree, temp_prefix, to_storage, write_image)
from ..image.omezarr import is_store
from ..image.tiles import ENCODED_WHOLE, Source, image_shape

# The signals a shell, `timeout`, or a job scheduler sends to end a program.
ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                       if hasattr(signal, name))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".npy"}
DEFAULT_TEMPLATE = "{stem}.{op}{ext}"
SPLIT_TEMPLATE = "{stem}.{op}.{channel}{ext}"


@dataclass(frozen=True)
class Settings:
    """How every output of a run is written and where it is computed."""

    depth: int | None = None  # None: the input's
    scale: str = "auto"
    engine: str = "cpu"
    threads: int | None = None
    max_pixels: int | None = None
    split_channels: bool = False
    stdout_suffix: str = ".png"
    memory: int = tiled.parse_size(tiled.DEFAULT_MEMORY)  # above this an image is processed in tiles
    temp_dir: str | None = None  # scratch for the FFTs of tiled images (None: TMPDIR)


@dataclass(frozen=True)
class Output:
    path: str  # "-" for standard output
    op: Any  # an operation of imfilt.ops (operations.py, frequency.py, ...)
    skip: bool = False  # all its files exist and --skip-existing
    extras: tuple[tuple[str, str], ...] = ()  # secondary files: (name in Result.extras, path), e.g. the mask

    @property
    def files(self) -> tuple[str, ...]:
        """Every file this output writes (standard output is no file)."""
        return tuple(p for p in (self.path, *(path for _, path in self.extras)) if p != "-")


@dataclass(frozen=True)
class Job:
    source: str  # a path, or "-" for the bytes read from standard input
    outputs: tuple[Output, ...]
    settings: Settings
    data: bytes | None = None  # standard input's bytes
    tiled: bool = False  # too large for memory: streamed window by window (tiled.py)
    banded: bool = False  # fits, but one output streams in bands all the same (fewer bytes touched)
    montage: Output | None = None  # --montage: one picture of all the outputs' maps (montage.py)
    refused: str | None = None  # why this input fails, known from its header at planning (one line, named)
    shape: tuple[int, int, int] | None = None  # (H, W, C) as its header says, when planning could read it

    @property
    def all_outputs(self) -> tuple[Output, ...]:
        return self.outputs + ((self.montage,) if self.montage else ())


@dataclass(frozen=True)
class MontageOf:
    """What a --montage output is made of: the maps of the job's operations."""

    name: str = "montage"


# --- planning ------------------------------------------------------------------------------


@dataclass
class Expanded:
    """The sources that INPUTS name, and a one-line reason for each item that named none."""

    sources: list[str] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)  # (item, why)


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    return path.is_file() if path.suffix.lower() in IMAGE_SUFFIXES else path.is_dir() and is_store(path)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """The images in a folder: files and zarr stores; -r descends into sub-folders but never into a store."""
    if not recursive:
        return [p for p in folder.iterdir() if _is_image(p)]
    found = []
    for root, folders, files in os.walk(folder):
        stores = [name for name in folders if is_store(Path(root, name))]
        folders[:] = [name for name in folders if name not in stores]  # a store is one image
        found += [p for p in (Path(root, name) for name in files + stores) if _is_image(p)]
    return found


def _inside_store(path: Path) -> bool:
    return any(is_store(parent) for parent in path.parents)


def expand_inputs(inputs: Iterable[str], recursive: bool = False,
                  is_output: Callable[[str], bool] = lambda name: False) -> Expanded:
    """Files, folders (their images), unexpanded globs and "-" -> sources.

    Files named explicitly are always inputs. Folders and globs leave out dot-files and the
    files whose names this run writes (``is_output``), so a re-run never feeds on its outputs.
    """
    expanded = Expanded()
    for item in inputs:
        path = Path(item)
        if item == "-" or path.is_file() or is_store(path):  # a zarr store is one image, not a folder
            expanded.sources.append(item)
            continue
        if path.is_dir():
            found = _folder_images(path, recursive)
            where = "in this folder" + ("" if recursive else " (-r descends into sub-folders)")
        elif glob.has_magic(item) and not path.exists():
            found = [Path(p) for p in glob.glob(item, recursive=recursive)
                     if (Path(p).is_file() or is_store(p)) and not _inside_store(Path(p))]
            where = "matches this pattern"
        else:
            expanded.sources.append(item)  # missing: reported as that input's failure
            continue
        images = sorted(str(p) for p in found if not is_output(p.name))
        expanded.sources.extend(images)
        if not images:
            left_out = len(found)
            why = f"no image {where}" + (f"; {left_out} left out as outputs of this run" if left_out else "")
            expanded.empty.append((item, why))
    return expanded


def output_name_pattern(ops: list, template: str | None, split: bool) -> Callable[[str], bool]:
    """Whether a file name is one this run would write: its template with any stem and ext."""
    template = template or (SPLIT_TEMPLATE if split else DEFAULT_TEMPLATE)
    patterns = []
    for op in ops:
        parts = re.split(r"(\{stem\}|\{ext\}|\{channel\}|\{op\})", template)
        regex = "".join(".*" if p in ("{stem}", "{ext}", "{channel}") else re.escape(op.name) if p == "{op}"
                        else re.escape(p) for p in parts)
        patterns.append(re.compile(regex, re.IGNORECASE))
    return lambda name: any(p.fullmatch(name) for p in patterns)


def read_list(stream, nul: bool) -> list[str]:
    """Paths from --from: one a line, or NUL-separated with -0 (names may hold newlines)."""
    text = stream.read()
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text and not nul:
        raise UsageError("the list of inputs holds NUL characters: add -0 for a NUL-separated list (find -print0)")
    items = text.split("\0") if nul else text.splitlines()
    return [item for item in items if item]


def _name(template: str, what: str, source: str, op, split: bool) -> str:
    stem, ext = ("stdin", ".png") if source == "-" else (Path(source).stem, Path(source).suffix.lower())
    if ext not in FORMATS:
        ext = ".png"  # e.g. a GIF, which imfilt reads but does not write
    try:  # {channel} stays for run_job to fill in, one file per channel
        return template.format(stem=stem, op=op.name, ext=ext, channel="{channel}" if split else "")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise UsageError(f"{what} {template!r}: use the fields {{stem}} {{op}} {{ext}} {{channel}} ({exc})") from None


def _output_path(source: str, op, split: bool, out: str | None, out_dir: str | None, template: str) -> str:
    """-o as given, else the template in --out-dir (or beside the input); the input's format."""
    if out is not None:
        return out
    name = _name(template, "--name", source, op, split)
    folder = Path(out_dir) if out_dir is not None else (Path.cwd() if source == "-" else Path(source).parent)
    return str(folder / name)


def _key(path: str) -> str:
    """One spelling per file: links and relative paths resolved."""
    return os.path.normcase(os.path.realpath(path))


def plan(sources: list[str], ops: list, settings: Settings, *, out: str | None = None,
         out_dir: str | None = None, template: str | None = None, overwrite: bool = False,
         skip_existing: bool = False, extras: dict[str, str] | None = None,
         absolute: bool = False, reads: Iterable[str] = (), montage: str | None = None) -> list[Job]:
    """One job per input; every output file named and checked before any image is read.

    ``extras`` are secondary files by name (``{"mask": "--mask-out template"}``); they get the
    same checks as the main outputs. ``montage`` names one picture per input of all its maps
    (``{stem}`` in it for several inputs), checked the same way. ``absolute`` makes every path
    absolute (for Dask workers).
    """
    split = settings.split_channels
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: choose one")
    if out is not None and len(sources) * len(ops) > 1:
        raise UsageError("-o names one output: with several inputs or kernels use --out-dir (and --name)")
    if split and out is not None:
        raise UsageError("--split-channels writes one file per channel: use --out-dir (and --name)")
    template = template or (SPLIT_TEMPLATE if split else DEFAULT_TEMPLATE)
    if split and "{channel}" not in template:
        raise UsageError(f"--name {template!r}: --split-channels needs {{channel}} in the name")
    extras = {name: path for name, path in (extras or {}).items() if path is not None}
    for name, path in extras.items():
        if len(sources) > 1 and "{stem}" not in path:
            raise UsageError(f"--{name}-out {path!r} would be written for every input: put {{stem}} in it")
    if montage == "-":
        raise UsageError("--montage writes a file: give its path (standard output takes the main output only)")
    if montage is not None and len(sources) > 1 and "{stem}" not in montage:
        raise UsageError(f"--montage {montage!r} would be written for every input: put {{stem}} in it")
    inputs = {_key(s): s for s in (*sources, *reads) if s != "-"}  # kernel files and templates too
    # match works on whole images, and so does a spectrum's --orientation
    streams = all(getattr(op, "runner", None) for op in ops)  # each op says how a huge image runs
    quiet_decoders()  # the header reads below must not log about a bad file: its job reports it
    jobs, seen = [], {}
    for source in sources:
        outputs = []
        shape, refused = _size(source, settings)
        pictures = [(path_op, None) for path_op in ops]
        if montage is not None:
            pictures.append((MontageOf(), _name(montage, "--montage", source, MontageOf(), False)))
        for op, fixed in pictures:
            path = fixed or _output_path(source, op, split, out, out_dir, template)
            more = tuple((name, _name(t, f"--{name}-out", source, op, False)) for name, t in extras.items()) if not fixed else ()
            if absolute:
                path = path if path == "-" else os.path.abspath(path)
                more = tuple((name, os.path.abspath(p)) for name, p in more)
            output = Output(path, op, extras=more)
            for file, depth in zip(output.files, (settings.depth,) + (None,) * len(more)):
                check_output_format(file, depth if file == path else None)
                key = _key(file.replace("{channel}", "r"))
                if key in inputs:
                    raise UsageError(f"{shown(file)} is both an input and an output of this run (from {shown(source)}); "
                                     "give a folder or a quoted glob, which leave this run's outputs out")
                _check_output_place(file, key, inputs, overwrite)
                if key in seen:
                    raise UsageError(f"{shown(seen[key])} and {shown(source)} would both write {shown(file)}: change --name")
                seen[key] = source
            if shape is not None and not fixed:
                _check_sizes(output, shape, source)
            skip = skip_existing and bool(output.files) and all(_done(f, settings) for f in output.files)
            outputs.append(replace(output, skip=skip))
        big = source != "-" and streams and tiled.needs_tiles(shape, settings.memory)
        picture = outputs.pop() if montage is not None else None
        banded = not big and picture is None and _bands_pay(shape, outputs, streams, settings)
        jobs.append(Job(source, tuple(outputs), settings, tiled=big, banded=banded, montage=picture, refused=refused,
                        shape=shape))
    if not overwrite and not skip_existing:  # --skip-existing redoes an output whose files are partly there
        _check_overwrites(jobs)
    return jobs


def _stdin_shape(data: bytes, settings: Settings) -> tuple[int, int, int] | None:
    """Standard input's (H, W, C) from its header; None where reading it whole has something to
    say (several frames, over the pixel limit: a decompression bomb is never decoded in bands)."""
    try:
        shape = image_shape(data)
        if shape is not None:
            check_pixels(shape[1], shape[0], settings.max_pixels or pillow_limit())
        return shape
    except InputError:
        return None


def _bands_pay(shape, outputs: list[Output], streams: bool, settings: Settings) -> bool:
    """Whether an image that fits in memory goes through the streamed runner all the same.

    A whole-image job touches several fresh float32 copies of the image, and on these machines
    new memory is time (~630 MB/s to fault in): bands of rows, reused, decoded, filtered and
    encoded at once, are faster from about a megapixel, and no slower below it in one band
    (docs/performance.md). Apply outputs into files that stream, several sharing one decode
    (stream_groups), in bands of whole rows; the rest stays whole.
    """
    if not streams or shape is None or shape[0] * shape[1] < STREAMED_PIXELS:
        return False
    todo = [o for o in outputs if not o.skip]
    if not (0 < len(todo) <= MAX_TOGETHER and all(
            o.op.runner == "windows" and not o.extras and _streams_into(o.path, settings) for o in todo)):
        return False
    try:
        window = tiled.shared_window([o.op for o in todo], shape, banded_memory(settings, len(todo)),
                                     tiled.most_rows(shape[0], one_band(shape)))
        return window is not None and window[1] == todo[0].op.output_shape(*shape[:2])[1]
    except UsageError:  # a kernel that does not fit: the whole-image path says so
        return False


def _streams_into(path: str, settings: Settings) -> bool:
    """A file (or standard output) that bands write to the whole-image writers' bytes, in a depth
    its format holds (else the whole-image path refuses it, as planning does a file's)."""
    suffix = settings.stdout_suffix if path == "-" else Path(path).suffix.lower()
    return suffix in BANDED_OUTPUTS and (suffix == ".npy" or settings.depth in (None, *FORMATS[suffix][1]))


def banded_memory(settings: Settings, outputs: int) -> int:
    """The budget of an image that fits, streamed in bands: a fixed one per output (larger ones
    only take more memory), within --memory."""
    return min(settings.memory, tiled.BANDED_MEMORY * outputs)


# the streamed files whose bytes are those of the whole-image writers (tiles.write_tiles's whole)
BANDED_OUTPUTS = (".png", ".npy", ".tif", ".tiff", ".zarr", *ENCODED_WHOLE)


# Every apply of an image that fits goes through the streamed runner (tests raise this to compare
# with the whole-image path) ...
STREAMED_PIXELS = 1
# ... decoded in bands of rows from a megapixel, where its format decodes top to bottom (tiles.open_source:
# libvips's sequential PNG and JPEG decoders, a TIFF's chunks); a smaller one, or one whose file does
# not stream, is decoded whole by io's decoders (every format, their errors) into its stored samples,
# converted to float32 band by band (tiles.Source over io.Decoded)
BANDED_PIXELS = 1 << 20


def _size(source: str, settings: Settings) -> tuple[tuple[int, int, int] | None, str | None]:
    """An input's (H, W, C) from its header, or why it fails: that input alone, in the run as in --dry-run.

    Refused here: a file that is missing or not a regular file, a .npy that holds no image, an
    image over the pixel limit (io.load and the tiled path refuse it the same way).
    """
    if source == "-":
        return None, None
    try:
        shape = image_shape(source)
        if shape is not None:
            try:
                check_pixels(shape[1], shape[0], settings.max_pixels or pillow_limit())
            except InputError as exc:
                raise InputError(f"{shown(source)}: {exc}") from None
    except InputError as exc:
        return None, str(exc)
    return shape, None


def _check_output_place(file: str, key: str, inputs: dict[str, str], overwrite: bool) -> None:
    """Outputs are files or zarr stores (folders): never written inside an input store, and
    --overwrite never replaces a folder that is not a store."""
    for parent in Path(key).parents:
        if str(parent) in inputs:
            raise UsageError(f"{shown(file)}: would be written inside the input {shown(inputs[str(parent)])}; choose another place")
    if overwrite and os.path.isdir(file) and not os.path.islink(file) and not is_store(file):
        raise UsageError(f"{shown(file)}: is a folder, not a zarr store: --overwrite replaces images only")


def _check_sizes(output: Output, shape: tuple[int, int, int], source: str) -> None:
    """JPEG and WebP outputs larger than the format holds, from the input's header (exit 2)."""
    if not hasattr(output.op, "output_shape"):
        return  # match's scores are never larger than the image, and its size depends on the template
    try:
        height, width = output.op.output_shape(*shape[:2])
    except UsageError:
        return  # a valid-size kernel larger than the image: that input fails when it runs
    check_output_size(output.path, height, width, source)
    for _, path in output.extras:  # the mask: the input's size
        check_output_size(path, *shape[:2], source)


def prepare_folders(jobs: list[Job], make: bool = True) -> None:
    """Make the folders the outputs go to, or refuse (exit 2) before any image is read.

    ``make=False`` (--dry-run): the same checks from what is there, making nothing (mkdir's own
    answer is foreseen from the nearest folder that exists: a file there, or no permission).
    """
    folders = {Path(f).parent for job in jobs for o in job.all_outputs if not o.skip for f in o.files}
    for folder in sorted(folders, key=str):
        place = shown(str(folder) or ".")
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{place}: is a file, not a folder for the outputs")
        try:
            if make:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.exists():
                _could_make(folder)
        except OSError as exc:
            raise UsageError(f"{place}: cannot make the output folder ({exc.strerror or exc})") from None
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{place}: cannot write into this folder (permission denied)")


def _could_make(folder: Path) -> None:
    """The OSError that making ``folder`` and its parents would raise, seen from the nearest one there."""
    there = next(parent for parent in folder.parents if parent.exists())
    if not there.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    if not os.access(there, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))


def remove_partial_files(jobs: list[Job]) -> None:
    """The temporaries of this run's outputs ('.NAME.XXXXXXXX.part' beside each) whose writer is
    gone: before a run, those a killed run left; after a signal, those it cut off between their
    creation and clean-up. One that a live process still writes (another imfilt run, which
    holds its lock) is left alone; nothing else is touched."""
    prefixes: dict[Path, list[re.Pattern]] = {}  # each folder is listed once, however many outputs it gets
    for file in {f for job in jobs for o in job.all_outputs for f in o.files}:
        path = Path(file)
        prefix = re.escape(temp_prefix(path.name)).replace(re.escape("{channel}"), ".*")
        prefixes.setdefault(path.parent, []).append(re.compile(prefix + r".*\.part"))
    for folder, patterns in prefixes.items():
        try:
            names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(".part")]
        except OSError:
            continue
        for part in (folder / name for name in names if any(p.fullmatch(name) for p in patterns)):
            fd = take_abandoned(part)
            if fd is None:
                continue
            try:
                if part.is_dir() and not part.is_symlink():  # a tiled or zarr output's folder
                    remove_tree(part)
                else:
                    part.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _exists(path: str, settings: Settings) -> bool:
    """For --split-channels an output is there when its first channel's file is."""
    if "{channel}" not in path:
        return os.path.lexists(path)
    return any(os.path.lexists(path.replace("{channel}", tiled.channel_names(n)[0])) for n in (1, 2, 3))


def _done(path: str, settings: Settings) -> bool:
    """--skip-existing: the output is there; a folder that is not a zarr store is only in the way."""
    return _exists(path, settings) and not (os.path.isdir(path) and not is_store(path))


def _check_overwrites(jobs: list[Job]) -> None:
    for job in jobs:
        for output in job.all_outputs:
            for file in output.files:
                if not output.skip and _exists(file, job.settings):
                    place = shown(file.replace("{channel}", "*"))
                    raise UsageError(f"{place}: exists; use --overwrite to replace it or --skip-existing")


# --- running one job -----------------------------------------------------------------------


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
        shape = _stdin_shape(job.data, settings)
        job = replace(job, shape=shape, banded=_bands_pay(shape, todo, True, settings))
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


def one_band(shape: tuple[int, int, int]) -> bool:
    """An image below BANDED_PIXELS: decoded whole, and streamed in one band (tiled.most_rows)."""
    return shape[0] * shape[1] < BANDED_PIXELS


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


# At most this many outputs share one decode: each is written on a thread of its own
MAX_TOGETHER = 8


def stream_groups(outputs: list[Output], shape: tuple[int, int, int], memory: int) -> list[list[Output]]:
    """The outputs of a streamed job in the groups that run together: up to MAX_TOGETHER apply
    outputs that share one window (tiled.shared_window) share one decode; the rest run one by
    one, as on Dask (there each output's windows are the cluster's tasks)."""
    chunks = [outputs[i : i + MAX_TOGETHER] for i in range(0, len(outputs), MAX_TOGETHER)]
    return [group for chunk in chunks for group in ([chunk] if _together(chunk, shape, memory) else [[o] for o in chunk])]


def _together(outputs: list[Output], shape: tuple[int, int, int], memory: int) -> bool:
    if len(outputs) < 2 or on_dask_worker():
        return False
    try:
        return tiled.shared_window([o.op for o in outputs], shape, memory) is not None
    except UsageError:  # a kernel that does not fit: each output fails on its own
        return False


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
                                          split=settings.split_channels, source=source, one_band=not _in_rows(job))
            else:
                apply = functools.partial(tiled.run_output, split=settings.split_channels)  # apply's option only
                run_output = {"windows": apply, "fft": tiled_fft.run_output}[outputs[0].op.runner]
                facts = [run_output(job.source, outputs[0], depth=settings.depth, scale=settings.scale, memory=memory,
                                    engine=engines[0], temp_dir=settings.temp_dir, progress=progress)]
            seconds = round(time.perf_counter() - start, 4)  # outputs made together: the time they took together
            for record, fact, engine in zip(made, facts, engines):
                record.update({k: v for k, v in fact.items() if not whole or k not in ("tiled", "window")},
                              engine=engine.name, seconds=seconds)
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


# --- running many jobs ---------------------------------------------------------------------


@dataclass
class Report:
    """Counts outputs written and skipped, and inputs failed; owns the exit code (as black's Report)."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        parts = [f"{self.done} written"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (exist)")
        if self.failed:
            names = ", ".join(map(shown, self.failed))
            parts.append(f"{len(self.failed)} input{'s' if len(self.failed) > 1 else ''} failed: {names}")
        return ", ".join(parts)


def _worker_init(parent: int) -> None:
    """Ending signals are the parent's to handle: a worker finishes the output it is writing.

    `timeout` and a terminal send theirs to the whole process group; the parent then cancels
    the jobs not started and waits for the running ones, so no output is cut short. A worker
    ends with its parent, even when that is killed with SIGKILL (which it cannot wait for).
    """
    _die_with(parent)
    for sig in ENDING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING_SIGNALS)  # blocked from the start (below)


def _die_with(parent: int) -> None:
    """Linux: the kernel kills this process when its parent ends (prctl PR_SET_PDEATHSIG), so a
    worker never outlives a run killed with kill -9; a parent gone already ends it now. Elsewhere
    nothing (the workers then end when they next talk to the pool)."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was asked for


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_resource_tracker() -> None:
    """multiprocessing's resource tracker (a process the pool starts) ends when the last process
    that talks to it has: after the workers, wait for it too, so nothing of the run outlives it."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # noqa: SLF001 - no public way
    if stop is not None:
        try:
            stop()
        except Exception:  # noqa: BLE001 - it may have ended already
            pass


def quiet_decoders() -> None:
    """Decoders' own warnings and log lines about a bad file stay off stderr: one line per error.

    Set once per process that runs jobs (this one, a worker, a Dask worker); the library API
    alone leaves them as they are.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", module=r"PIL\.")
    warnings.filterwarnings("ignore", module=r"tifffile")
    for name in ("PIL", "tifffile", "png", "pyvips"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _safe_run(job: Job, records: list[dict] | None = None,
              progress: tiled.Progress | None = None) -> tuple[Job, list[dict] | None, str | None]:
    """A failure costs only this job: its one-line message goes back with it."""
    quiet_decoders()
    try:
        return job, run_job(job, records, progress), None
    except InputError as exc:
        return job, None, str(exc)
    except UsageError as exc:  # e.g. a kernel larger than this image with --size valid
        return job, None, f"{shown(job.source)}: {exc}"
    except (BrokenPipeError, Stopped):
        raise  # standard output's reader went away (exit 141), or the run was interrupted: not this job
    except MemoryError:
        return job, None, f"{shown(job.source)}: not enough memory for this image"
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop a batch; this is a bug
        return job, None, f"{shown(job.source)}: internal error: {type(exc).__name__}: {exc}"


def execute(jobs: list[Job], *, workers: int = 1, scheduler: str | None = None, fail_fast: bool = False,
            progress: Callable[[Job, float], None] | None = None, processes: bool = False) -> Iterator[tuple]:
    """Yield (job, records, error) as jobs finish: here (one at a time, or ``workers`` threads),
    in ``workers`` worker processes (``processes``), or on Dask.

    With ``fail_fast`` no job starts after the first failure. ``progress(job, fraction)`` is
    told how far a job running alone in this process is (threads, worker processes and Dask
    report whole jobs only, as they finish).
    """
    if scheduler:
        from .distributed import futures_on_dask

        with futures_on_dask(scheduler, _safe_run, jobs) as (futures, completed, stop, result):
            yield from as_finished(futures, completed, fail_fast, stop, result)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done: list[dict] = []
            part = None if progress is None else functools.partial(progress, job)
            result = None
            try:
                result = _safe_run(job, done, part)
                yield result
            except KeyboardInterrupt:
                # Ctrl-C or a signal mid-job (what it wrote is whole, and counted), or as the
                # caller took its result: given again, the caller knows whether it counted it
                if result is not None:
                    yield result
                elif done:
                    yield job, done, None
                raise
            if fail_fast and result[2]:
                return
    elif processes:
        yield from _run_in_processes(jobs, workers, fail_fast)
    else:
        yield from _run_in_threads(jobs, workers, fail_fast)


def as_finished(futures: list, completed: Iterable, fail_fast: bool,
                stop: Callable[[], None] | None = None, result: Callable = lambda future: future.result()
                ) -> Iterator[tuple]:
    """Results of futures (a thread or process pool's, or Dask's) in the order ``completed`` gives them.

    After the first failure with ``fail_fast``, or on Ctrl-C, the jobs not started are
    cancelled and those already running finish: their outputs are whole, so they are reported.
    On Ctrl-C, ``stop()`` (Dask's) first asks running jobs to end unwritten, and waits for them.
    """
    given, interrupted = {}, None  # future -> its result, as given to the caller
    try:
        for future in completed:
            outcome = result(future)
            given[future] = outcome
            yield outcome
            if fail_fast and outcome[2]:
                break
    except KeyboardInterrupt as exc:
        interrupted = exc
        if given:  # the caller may have been interrupted as it took the last one: it knows
            yield next(reversed(given.values()))
        if stop is not None:
            stop()
    finally:
        for future in futures:
            future.cancel()
    left = (f for f in futures if f not in given and not f.cancelled())
    yield from (outcome for outcome in (_finished(f, result) for f in left) if outcome)
    if interrupted:
        raise interrupted


def _finished(future, result: Callable) -> tuple | None:
    """A job's result, or None for one that stopped unwritten when the run was interrupted."""
    try:
        return result(future)
    except Stopped:
        return None


def _run_in_threads(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[tuple]:
    """Jobs on threads of this process (no start-up to pay; decoding, filtering and deflate release
    the GIL), their results in the inputs' order. An ending signal is raised in the main thread,
    here: the running jobs finish (WHILE_WRITING holds signals for the main thread only)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="imfilt-job") as pool:
        futures = [pool.submit(_safe_run, job) for job in jobs]
        # in the inputs' order, as one at a time: messages and --json lines do not depend on timing
        yield from as_finished(futures, iter(futures), fail_fast)


def _run_in_processes(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[tuple]:
    import multiprocessing

    # One BLAS/FFT thread per worker (jobs carry threads=1 too), so N workers do not fight
    # over the cores; spawned workers read these limits as they start.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    context = multiprocessing.get_context("spawn")
    try:
        yield from _pool_results(jobs, workers, fail_fast, context)
    finally:  # the workers have ended (the pool waits for them), even after a signal
        _stop_resource_tracker()


def _pool_results(jobs: list[Job], workers: int, fail_fast: bool, context) -> Iterator[tuple]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_worker_init,
                             initargs=(os.getpid(),)) as pool:
        # Workers start (in submit) with the ending signals blocked, until their initializer
        # ignores them: one sent to the group while a worker was still importing killed it.
        futures = []
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)
        try:
            futures += [pool.submit(_safe_run, job) for job in jobs]
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held meanwhile arrives here
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        yield from as_finished(futures, as_completed(futures), fail_fast)
