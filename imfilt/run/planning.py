"""Inputs -> jobs: every input found, every output named and checked, before any image is read.

Planning happens in the calling process and catches what would make the whole run wrong
(name clashes, unknown formats, outputs over inputs) from the files' headers alone. A job is one
input and the outputs made from it; it is plain data, so it runs the same here, in a worker
process or on a Dask cluster. Planning also decides how an image that fits runs (bands_pay):
through the streamed runner in bands, or whole.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from . import tiled
from .distributed import on_dask_worker
from ..errors import InputError, UsageError, shown
from ..files import take_abandoned
from ..image.io import (FORMATS, check_output_format, check_output_size, check_pixels, pillow_limit, remove_tree,
                        temp_prefix)
from ..image.omezarr import is_store
from ..image.tiles import ENCODED_WHOLE, image_shape

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
        banded = not big and picture is None and bands_pay(shape, outputs, streams, settings)
        jobs.append(Job(source, tuple(outputs), settings, tiled=big, banded=banded, montage=picture, refused=refused,
                        shape=shape))
    if not overwrite and not skip_existing:  # --skip-existing redoes an output whose files are partly there
        _check_overwrites(jobs)
    return jobs


def stdin_shape(data: bytes, settings: Settings) -> tuple[int, int, int] | None:
    """Standard input's (H, W, C) from its header; None where reading it whole has something to
    say (several frames, over the pixel limit: a decompression bomb is never decoded in bands)."""
    try:
        shape = image_shape(data)
        if shape is not None:
            check_pixels(shape[1], shape[0], settings.max_pixels or pillow_limit())
        return shape
    except InputError:
        return None


def bands_pay(shape, outputs: list[Output], streams: bool, settings: Settings) -> bool:
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
        window = tiled.banded_window([o.op for o in todo], shape, banded_memory(settings, len(todo)), one_band(shape))
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


def one_band(shape: tuple[int, int, int]) -> bool:
    """An image below BANDED_PIXELS: decoded whole, and streamed in one band (tiled.banded_window)."""
    return shape[0] * shape[1] < BANDED_PIXELS


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
