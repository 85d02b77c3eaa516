"""The options every command shares, and a batch run from them: plan, execute, report.

The commands (commands.py) parse their own options into operations and call ``run``.
"""

import functools
import inspect
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from .. import __version__
from ..engine.engine import ENGINES, get_engine
from ..errors import Interrupted, LostCluster, UsageError, one_line, shown
from ..files import read_at_most
from ..image.io import DEPTHS, check_stdout_format, most_bytes, pillow_limit
from ..run.execute import Report, execute
from ..run.pipeline import ENDING_SIGNALS, WHILE_WRITING, json_line
from ..run.planning import (Expanded, MontageOf, Settings, expand_inputs, output_name_pattern, plan, prepare_folders,
                            read_list, remove_partial_files)
from ..run.tiled import DEFAULT_MEMORY, parse_size

err = Console(stderr=True, highlight=False, soft_wrap=True)


def say(text: str) -> None:
    """A line on stderr for people: always one line, whatever a file name or a library put in it."""
    err.print(one_line(text), markup=False)


class OneLineErrors(TyperGroup):
    """Click's usage errors (a missing -k, -j 0) as one line, like every other error of imfilt."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            code = 130
        except typer.TyperException as exc:  # typer's (vendored) click errors: usage and bad values
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # plain `imfilt`: the help text
            else:
                ctx = getattr(exc, "ctx", None)
                command = ctx.command_path if ctx else "imfilt"
                print(one_line(f"{command}: {exc.format_message().replace('Value error, ', '')} (see '{command} --help')"),
                      file=sys.stderr)
            code = exc.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # caught here, before typer turns it into exit 1
            # the reader of standard output went away (| head): no traceback, no error when Python flushes
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None


app = typer.Typer(
    name="imfilt",
    cls=OneLineErrors,
    help="Filter images by convolution and in the Fourier domain. Run 'imfilt COMMAND --help' for examples.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def choice_enum(name: str, values) -> type[Enum]:
    """An Enum of a library's value list, so Typer shows and checks the choices."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Engine = choice_enum("Engine", ENGINES)
Depth = choice_enum("Depth", tuple(map(str, DEPTHS)))


INPUTS_HELP = ("INPUTS: image files, zarr stores, folders (their images; -r descends), quoted globs, or - for "
               "standard input. Folders and globs leave out dot-files and files named like this run's outputs.")


@dataclass
class Batch:
    """The options that every command shares (named the same across commands)."""

    inputs: list
    output: Optional[str]
    out_dir: Optional[str]
    name: Optional[str]
    format: str
    depth: Optional[Depth]
    engine: Engine
    jobs: Optional[int]
    json: bool
    quiet: bool
    overwrite: bool
    skip_existing: bool
    recursive: bool
    from_file: Optional[str]
    null: bool
    fail_fast: bool
    scheduler: Optional[str]
    max_pixels: Optional[int]
    memory: str
    temp_dir: Optional[str]
    gray: bool
    debug: bool
    dry_run: bool


_COMMON = {
    "inputs": (Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUTS...", help="Image files, folders, globs, or - for standard input.", show_default=False,
        hidden=True)], None),  # described in each help text: typer would print its type, <list[str]>
    "output": (Annotated[Optional[str], typer.Option(
        "-o", "--output", metavar="PATH", help="The output for one input (- = standard output).")], None),
    "out_dir": (Annotated[Optional[str], typer.Option(metavar="DIR", help="Folder for the outputs (default: beside each input).")], None),
    "name": (Annotated[Optional[str], typer.Option(
        metavar="TEMPLATE", help="Output name template: {stem} {op} {ext} {channel}.  [default: {stem}.{op}{ext}]")], None),
    "format": (Annotated[str, typer.Option(metavar="EXT", help="Format when writing to standard output (png, tif, npy, ...).")], "png"),
    "depth": (Annotated[Optional[Depth], typer.Option(help="Output bits per sample (32 = float TIFF, .npy or .zarr).  [default: the input's]")], None),
    "engine": (Annotated[Engine, typer.Option(help="auto: the GPU, when cupy and a CUDA device are present, for FFT work (dense kernels, spectrum, lowpass, match) on images of 4096x4096 and more, where it was measured faster; else the CPU.")], Engine.cpu),
    "jobs": (Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, metavar="N",
                                                    help="Worker processes, at most the cores and the inputs.  [default: threads of this process, as many as the cores; one job at a time if an input streams over --memory]")], None),
    "json": (Annotated[bool, typer.Option("--json", help="One JSON object per output on standard output.")], False),
    "quiet": (Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")], False),
    "overwrite": (Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")], False),
    "skip_existing": (Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists (resumable runs).")], False),
    "recursive": (Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")], False),
    "from_file": (Annotated[Optional[str], typer.Option(
        "--from", metavar="FILE", help="Read input paths from a file (- = standard input), one a line.")], None),
    "null": (Annotated[bool, typer.Option("-0", "--null", help="--from paths are NUL-separated (find -print0).")], False),
    "fail_fast": (Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed input.")], False),
    "scheduler": (Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="Run the jobs on a Dask cluster, e.g. tcp://host:8786.")], None),
    "max_pixels": (Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Raise the decompression-bomb limit (pixels).")], None),
    "memory": (Annotated[str, typer.Option(metavar="SIZE", help="Memory budget: larger images are streamed in tiles "
                                           "(TIFF, PNG, JPEG, .npy, zarr in; .tif, .png, .npy, .zarr out), e.g. 600M, 8G.")], DEFAULT_MEMORY),
    "temp_dir": (Annotated[Optional[str], typer.Option(metavar="DIR", help="Scratch space for the FFTs of images larger than "
                                                       "memory.  [default: TMPDIR]")], None),
    "gray": (Annotated[bool, typer.Option("--gray", help="Work on luminance (ITU-R 601) instead of per channel.")], False),
    "debug": (Annotated[bool, typer.Option("--debug", help="Show tracebacks.")], False),
    "dry_run": (Annotated[bool, typer.Option("--dry-run", help="Print the plan (inputs, outputs, methods, memory) and write nothing.")], False),
}


def batch_command(fn: Callable) -> Callable:
    """Add the shared options to a command's signature and hand them over as one ``Batch``."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [p.replace(kind=keyword) for p in inspect.signature(fn).parameters.values() if p.name != "batch"]
    common = [inspect.Parameter(name, keyword, annotation=hint, default=default)
              for name, (hint, default) in _COMMON.items()]

    @functools.wraps(fn)
    def command(**kwargs):
        batch = Batch(**{name: kwargs.pop(name) for name in _COMMON})
        try:
            return fn(batch=batch, **kwargs)
        except UsageError as exc:
            if batch.debug:
                raise
            say(f"imfilt: {exc}")
            raise typer.Exit(2) from None
        except (typer.Exit, typer.BadParameter, BrokenPipeError):
            raise
        except OSError as exc:  # a path the system refuses while planning (e.g. a name too long)
            if batch.debug or exc.filename is None:
                raise
            name = str(exc.filename)
            label = shown(name if len(name) <= 80 else name[:60] + f"... ({len(name)} characters)")
            say(f"imfilt: {label}: {exc.strerror or exc}")
            raise typer.Exit(2) from None
        except Exception as exc:  # a bug: one line, the traceback with --debug
            if batch.debug:
                raise
            say(f"imfilt: internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
            raise typer.Exit(1) from None

    command.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\n" + INPUTS_HELP
    command.__signature__ = inspect.Signature(common[:1] + own + common[1:])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


def _items(batch: Batch) -> list[str]:
    items = list(batch.inputs or [])
    if batch.from_file is not None:
        try:
            if batch.from_file == "-":
                items += read_list(sys.stdin.buffer, batch.null)
            else:
                with open(batch.from_file, "rb") as f:
                    items += read_list(f, batch.null)
        except OSError as exc:
            raise UsageError(f"{shown(batch.from_file)}: cannot read the list of inputs ({exc.strerror})") from None
    if not items:
        raise UsageError("no inputs: give image files, folders, - for standard input, or --from FILE")
    if items.count("-") > 1 or ("-" in items and batch.from_file == "-"):
        raise UsageError("standard input can be read only once")
    return items


def _check_streams(batch: Batch, pipes: bool) -> None:
    """Standard input and output: there, not a terminal, and never across to Dask workers."""
    writes_stdout = batch.output == "-" or batch.json
    if writes_stdout and sys.stdout is None:
        raise UsageError("standard output is closed: use -o FILE" if batch.output == "-" else
                         "standard output is closed: --json has nowhere to go")
    if batch.output == "-" and batch.json:
        raise UsageError("--json and -o - both write to standard output: choose one")
    if batch.output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal: redirect standard output or use -o FILE")
    if batch.scheduler and pipes:
        raise UsageError("--scheduler: Dask workers read and write files by path, so standard input and "
                         "output cannot be used; give file paths")


def plan_batch(batch: Batch, ops: list, scale: str = "auto", split_channels: bool = False,
               extras: dict[str, str] | None = None, reads: tuple[str, ...] = (),
               montage: str | None = None) -> tuple[list, Expanded, int]:
    """Everything that can be wrong with the whole run is found here, before any image is read.

    Returns the jobs, what the inputs expanded to (with the items that named no image), and
    the number of worker processes.
    """
    items = _items(batch)
    output, out_dir = batch.output, batch.out_dir
    stdin_to_stdout = output is None and items == ["-"] and out_dir is None
    _check_streams(batch, pipes="-" in items or output == "-" or stdin_to_stdout)
    if batch.scheduler:
        from ..run.distributed import check_address

        check_address(batch.scheduler)
    if stdin_to_stdout:
        output = "-"  # a pipe in, a pipe out
        if sys.stdout is None or sys.stdout.isatty():
            raise UsageError("standard input given but no output: use -o FILE, or redirect standard output")
    if "-" in items and sys.stdin.isatty():
        raise UsageError("- reads an image from standard input, but it is a terminal")
    is_output = output_name_pattern(ops, batch.name, split_channels)
    if montage is not None:  # a folder given again never takes its montages for inputs
        is_montage = output_name_pattern([MontageOf()], Path(montage).name, False)
        is_output = (lambda outputs, montages: lambda name: outputs(name) or montages(name))(is_output, is_montage)
    expanded = expand_inputs(items, batch.recursive, is_output)
    sources = expanded.sources
    if batch.scheduler:  # Dask workers run elsewhere: give them paths that do not depend on our folder
        sources = [os.path.abspath(s) for s in sources]
    settings = Settings(depth=int(batch.depth.value) if batch.depth else None, scale=scale,
                        engine=batch.engine.value, max_pixels=batch.max_pixels, split_channels=split_channels,
                        stdout_suffix=check_stdout_format(batch.format), memory=parse_size(batch.memory),
                        temp_dir=_temp_dir(batch.temp_dir))
    jobs = plan(sources, ops, settings, out=output, out_dir=out_dir, template=batch.name,
                overwrite=batch.overwrite, skip_existing=batch.skip_existing, extras=extras,
                absolute=bool(batch.scheduler), reads=reads, montage=montage)
    workers = worker_count(batch.jobs, len(jobs), os.cpu_count() or 1, any(job.tiled for job in jobs))
    threads = 1 if workers > 1 or batch.scheduler else None
    get_engine(settings.engine, threads)  # no GPU, or a bad IMFILT_FFT: one clear error now
    jobs = [replace(job, settings=replace(job.settings, threads=threads)) for job in jobs]
    return jobs, expanded, workers


def _temp_dir(path: str | None) -> str | None:
    """--temp-dir: an existing folder, made absolute (workers may run elsewhere)."""
    if path is not None and not Path(path).is_dir():
        raise UsageError(f"--temp-dir {shown(path)}: no such folder")
    return path and os.path.abspath(path)


def worker_count(requested: int | None, inputs: int, cores: int, streamed: bool = False) -> int:
    """Jobs at once: never more than cores or inputs; by default the cores, or one where an
    input streams over --memory (each streamed job takes --memory).

    -j N runs worker processes; the default runs threads of this process, which start at once
    (processes cost ~0.5 s), while decoding, filtering and deflate release the GIL. Measured on 2
    cores, gaussian σ=2: 40 photos of 300x450 to 512x512 0.51-0.60 s on 2 threads, 0.77-0.85 s
    one at a time; 100 of 640x480 1.30-1.44 s, 1.48-1.64 s with -j 2, 2.34-2.47 s one at a time.
    """
    default = 1 if streamed else cores
    return max(1, min(requested or default, cores, inputs))


def run(batch: Batch, ops: list, scale: str = "auto", split_channels: bool = False,
        extras: dict[str, str] | None = None, reads: tuple[str, ...] = (), montage: str | None = None) -> None:
    """Plan, run and report a batch; raises typer.Exit with the exit code of docs/usage.md.

    ``reads`` are the other files the run reads (kernel files, a template): never outputs.
    ``montage`` names one picture per input of all its outputs' maps.
    """
    jobs, expanded, workers = plan_batch(batch, ops, scale, split_channels, extras, reads, montage)
    prepare_folders(jobs, make=not batch.dry_run)  # the dry run checks the places, and makes none
    if batch.dry_run:
        from ..run.dry_run import describe, print_plan

        records, summary = describe(jobs, expanded, workers, batch.scheduler, "auto" if batch.engine.value == "auto" else get_engine(batch.engine.value).name)
        raise typer.Exit(print_plan(records, summary, batch.json))
    remove_partial_files(jobs)  # what a killed run left beside these outputs (never another run's)
    if any(job.source == "-" for job in jobs):
        limit = min(parse_size(batch.memory), most_bytes(batch.max_pixels or pillow_limit()))
        data = read_at_most(sys.stdin.buffer, limit)
        refused = None if data is not None else (f"<stdin>: more than {limit} bytes, more than --memory or the pixel limit "
                                                 "allows an image to take; give a file")
        jobs = [replace(job, data=data, refused=refused) if job.source == "-" else job for job in jobs]
    report = Report()
    for item, why in expanded.empty:  # nothing to do is said, and is not success
        report.failed.append(item)
        say(f"{shown(item)}: {why}")
    try:
        with _signals_interrupt():
            if not (batch.fail_fast and report.failed):
                _report_jobs(batch, jobs, workers, report)
    except LostCluster as exc:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the client's loop, cut short
        say(f"imfilt: {exc}; {report.summary()}")
        raise typer.Exit(1) from None
    except Interrupted as exc:
        # zarr's I/O loop (streamed images) may hold tasks the interruption cut short: asyncio
        # would log them at exit, after the one line
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        remove_partial_files(jobs)
        how = "interrupted" if exc.signum == signal.SIGINT else f"stopped by {signal.Signals(exc.signum).name}"
        say(f"imfilt: {how}; {report.summary()}")
        raise typer.Exit(128 + exc.signum) from None
    if len(jobs) + len(expanded.empty) > 1 and (report.failed or not batch.quiet):
        say(f"imfilt: {report.summary()}")
    raise typer.Exit(report.exit_code)


@contextmanager
def _signals_interrupt():
    """Turn an ending signal into Interrupted, so outputs in progress finish or are removed.

    The first signal is enough: later ones are ignored while the run winds down, so the
    clean-up itself is never cut short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        for sig in ENDING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if WHILE_WRITING.active:  # an output being written finishes, and is counted, first
            WHILE_WRITING.pending = signum
            return
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in ENDING_SIGNALS}
    try:
        yield
    except KeyboardInterrupt as exc:  # raised before our handler was in place, or by a worker pool
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(signal.SIGINT) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report_jobs(batch: Batch, jobs: list, workers: int, report) -> None:
    finished = 0
    with _progress(batch, jobs) as bar:

        counted = None

        def handle(result: tuple) -> None:
            """Count a result, signals held. A signal that came just before is thrown into
            ``results``, which gives the result it was handing over again: counted or not."""
            nonlocal finished, counted
            if result is counted:
                return
            job, records, error = result
            with WHILE_WRITING:
                if error:
                    report.failed.append(job.source)
                    say(error)
                for record in records or ():
                    report.skipped += record["skipped"]
                    report.done += not record["skipped"]
                    note = record.pop("note", None)  # a line for people (e.g. the orientations found)
                    if note and not batch.json and not batch.quiet:
                        say(f"{shown(record['input'])}: {note}")
                    if batch.json:
                        print(json_line(record), flush=True)
                bar.finish(job)
                finished += 1
                counted = result

        results = execute(jobs, workers=workers, scheduler=batch.scheduler, fail_fast=batch.fail_fast,
                          progress=bar.part, processes=batch.jobs is not None)
        try:
            for result in results:
                handle(result)
        except KeyboardInterrupt as interrupt:
            # it came while a result was handled here, outside execute: hand it to execute, which
            # winds the run down as it would have (running jobs finish and are counted, the rest are
            # cancelled), then raises it again; a job a worker finished is never left uncounted
            for result in _wound_down(results, interrupt):
                handle(result)
            raise
    if report.failed and batch.fail_fast and finished < len(jobs):
        say("imfilt: stopped at the first failure (--fail-fast)")


def _wound_down(results, interrupt: KeyboardInterrupt):
    """What a run's results generator still yields once ``interrupt`` is thrown into it."""
    try:
        first = results.throw(interrupt)
    except StopIteration:
        return
    yield first
    yield from results


def progress_weights(jobs: list) -> list[float]:
    """What each job weighs on the progress bar: its pixels (from the header, as planned) times
    the outputs it makes.

    An input of unknown size (standard input, a header that could not be read) weighs as the
    median known one, or 1 when none is known; one refused at planning, or with every output
    skipped, next to nothing (it ends at once).
    """
    known = sorted(job.shape[0] * job.shape[1] for job in jobs if job.shape is not None)
    typical = known[len(known) // 2] if known else 1
    weights = []
    for job in jobs:
        outputs = sum(not o.skip for o in job.all_outputs)
        if job.refused or not outputs:
            weights.append(typical / 1000)
        else:
            weights.append(outputs * (job.shape[0] * job.shape[1] if job.shape is not None else typical))
    return weights


class _progress:
    """A rich progress bar on stderr when it is a terminal and not --quiet; otherwise nothing.

    Shown for several inputs, or one streamed input (which may take minutes). Its bar and time
    left go by pixels (``progress_weights``), and a job running in this process moves it as its
    outputs and windows are done (``part``); "M/N" counts whole inputs.
    """

    def __init__(self, batch: Batch, jobs: list):
        # --json lines on the same terminal would tear the bar: then no bar
        json_on_terminal = batch.json and sys.stdout is not None and sys.stdout.isatty()
        self.enabled = (err.is_terminal and not batch.quiet and not json_on_terminal
                        and (len(jobs) > 1 or any(job.tiled for job in jobs)))
        self.jobs = jobs
        self.count = 0
        self.part = None  # execute's progress(job, fraction), when there is a bar

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        weights = progress_weights(self.jobs)
        self.weights = {id(job): weight for job, weight in zip(self.jobs, weights)}
        self.by_source = {job.source: weight for job, weight in zip(self.jobs, weights)}
        self.finished = 0.0  # the weight of the jobs finished
        self.running: dict[int, float] = {}  # id(job) -> the weight done of a job running here
        self.told = 0.0  # when _part last moved the bar
        # redirect_stdout=False: --json lines go to standard output (a file, a pipe), not to the bar's stderr
        self.bar = Progress(TextColumn("imfilt"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[images]}"),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True,
                            redirect_stdout=False)
        self.bar.start()
        self.task = self.bar.add_task("imfilt", total=sum(weights) or 1, images=self._images(), rate="")
        self.part = self._part
        return self

    def _images(self) -> str:
        return f"{self.count}/{len(self.jobs)} images" if len(self.jobs) > 1 else ""

    def _part(self, job, fraction: float) -> None:
        """A job running in this process is ``fraction`` done (told at most 20 times a second:
        a small --memory makes thousands of windows)."""
        now = time.monotonic()
        weight = self.weights.get(id(job))
        if weight is None or now - self.told < 0.05:
            return
        self.told = now
        self.running[id(job)] = max(self.running.get(id(job), 0.0), weight * min(1.0, fraction))
        self.bar.update(self.task, completed=self.finished + sum(self.running.values()))

    def finish(self, job) -> None:
        """A job has ended (written, skipped or failed), here, in a worker process or on Dask."""
        if not self.enabled:
            return
        self.running.pop(id(job), None)
        # a job back from a worker process or Dask is a copy: known by its source
        weight = self.weights.get(id(job), self.by_source.get(job.source, 0.0))
        self.finished += weight
        self.count += 1
        elapsed = self.bar.tasks[0].elapsed
        rate = f"{self.count / elapsed:.1f} img/s" if len(self.jobs) > 1 and elapsed else ""
        self.bar.update(self.task, completed=self.finished + sum(self.running.values()), images=self._images(), rate=rate)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def _version(value: bool) -> None:
    if value:
        print(f"imfilt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Show the version and exit.")] = False) -> None:
    """Filter images by convolution and in the Fourier domain."""


