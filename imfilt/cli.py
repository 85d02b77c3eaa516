"""The command line: a thin Typer layer that parses options and calls the library."""

import functools
import inspect
import json
import os
import sys
from dataclasses import dataclass, replace
from enum import Enum
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from . import __version__
from .engine import ENGINES, get_engine
from .errors import UsageError
from .io import DEPTHS, check_output_format
from .pipeline import Report, Settings, execute, expand_inputs, plan, read_list

err = Console(stderr=True, highlight=False, soft_wrap=True)
app = typer.Typer(
    name="imfilt",
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


SMALL_BATCH = 8


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
    gray: bool
    debug: bool


_COMMON = {
    "inputs": (Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUTS...", help="Image files, folders, globs, or - for standard input.", show_default=False)], None),
    "output": (Annotated[Optional[str], typer.Option(
        "-o", "--output", metavar="PATH", help="The output for one input (- = standard output).")], None),
    "out_dir": (Annotated[Optional[str], typer.Option(metavar="DIR", help="Folder for the outputs (default: beside each input).")], None),
    "name": (Annotated[Optional[str], typer.Option(
        metavar="TEMPLATE", help="Output name template: {stem} {op} {ext} {channel}.  [default: {stem}.{op}{ext}]")], None),
    "format": (Annotated[str, typer.Option(metavar="EXT", help="Format when writing to standard output (png, tif, npy, ...).")], "png"),
    "depth": (Annotated[Optional[Depth], typer.Option(help="Output bits per sample (32 = float TIFF).  [default: the input's]")], None),
    "engine": (Annotated[Engine, typer.Option(help="auto uses the GPU when cupy and a CUDA device are present.")], Engine.cpu),
    "jobs": (Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, metavar="N", help="Worker processes.  [default: the cores; 1 for up to 8 inputs]")], None),
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
    "gray": (Annotated[bool, typer.Option("--gray", help="Work on luminance (ITU-R 601) instead of per channel.")], False),
    "debug": (Annotated[bool, typer.Option("--debug", help="Show tracebacks.")], False),
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
            err.print(f"imfilt: {exc}", markup=False)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.BadParameter):
            raise
        except Exception as exc:  # a bug: one line, the traceback with --debug
            if batch.debug:
                raise
            err.print(f"imfilt: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", markup=False)
            raise typer.Exit(1) from None

    command.__signature__ = inspect.Signature(common[:1] + own + common[1:])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


def _sources(batch: Batch) -> list[str]:
    items = list(batch.inputs or [])
    if batch.from_file is not None:
        try:
            if batch.from_file == "-":
                items += read_list(sys.stdin.buffer, batch.null)
            else:
                with open(batch.from_file, "rb") as f:
                    items += read_list(f, batch.null)
        except OSError as exc:
            raise UsageError(f"{batch.from_file}: cannot read the list of inputs ({exc.strerror})") from None
    if not items:
        raise UsageError("no inputs: give image files, folders, - for standard input, or --from FILE")
    if items.count("-") > 1 or ("-" in items and batch.from_file == "-"):
        raise UsageError("standard input can be read only once")
    return expand_inputs(items, batch.recursive)


def _plan_jobs(batch: Batch, ops: list, scale: str, split_channels: bool) -> tuple[list, int]:
    """Everything that can be wrong with the whole run is found here, before any image is read."""
    if batch.output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal: redirect standard output or use -o FILE")
    if batch.output == "-" and batch.json:
        raise UsageError("--json and -o - both write to standard output: choose one")
    sources = _sources(batch)
    output, out_dir = batch.output, batch.out_dir
    if batch.scheduler:  # Dask workers run elsewhere: give them paths that do not depend on our folder
        sources = [s if s == "-" else os.path.abspath(s) for s in sources]
        output = output if output in (None, "-") else os.path.abspath(output)
        out_dir = out_dir and os.path.abspath(out_dir)
    if output is None and sources == ["-"] and out_dir is None:
        output = "-"  # a pipe in, a pipe out
        if sys.stdout.isatty():
            raise UsageError("standard input given but no output: use -o FILE, or redirect standard output")
    if "-" in sources and sys.stdin.isatty():
        raise UsageError("- reads an image from standard input, but it is a terminal")
    # Starting worker processes costs ~0.4 s: by default only batches of more than 8 inputs use them.
    workers = batch.jobs or ((os.cpu_count() or 1) if len(sources) > SMALL_BATCH else 1)
    settings = Settings(depth=int(batch.depth.value) if batch.depth else None, scale=scale,
                        engine=batch.engine.value, threads=1 if workers > 1 or batch.scheduler else None,
                        max_pixels=batch.max_pixels, split_channels=split_channels,
                        stdout_suffix=check_output_format(f"x.{batch.format.lstrip('.')}", None))
    get_engine(settings.engine, settings.threads)  # no GPU, or a bad IMFILT_FFT: one clear error now
    jobs = plan(sources, ops, settings, out=output, out_dir=out_dir, template=batch.name,
                overwrite=batch.overwrite, skip_existing=batch.skip_existing)
    if any(job.source == "-" for job in jobs):
        data = sys.stdin.buffer.read()
        jobs = [replace(job, data=data) if job.source == "-" else job for job in jobs]
    return jobs, workers


def run(batch: Batch, ops: list, scale: str = "auto", split_channels: bool = False) -> None:
    """Plan, run and report a batch; raises typer.Exit with the exit code of DESIGN.md."""
    jobs, workers = _plan_jobs(batch, ops, scale, split_channels)
    report = Report()
    try:
        _report_jobs(batch, jobs, workers, report)
    except KeyboardInterrupt:
        err.print(f"imfilt: interrupted; {report.summary()}", markup=False)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader went away (| head): no traceback, no second error when Python flushes
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    if report.failed or (not batch.quiet and len(jobs) > 1):
        err.print(f"imfilt: {report.summary()}", markup=False)
    raise typer.Exit(report.exit_code)


def _report_jobs(batch: Batch, jobs: list, workers: int, report) -> None:
    finished = 0
    with _progress(batch, len(jobs)) as advance:
        for job, records, error in execute(jobs, workers=workers, scheduler=batch.scheduler, fail_fast=batch.fail_fast):
            if error:
                report.failed.append(job.source)
                err.print(error, markup=False)
            for record in records or ():
                report.skipped += record["skipped"]
                report.done += not record["skipped"]
                if batch.json:
                    print(json.dumps(record, ensure_ascii=False), flush=True)
            advance()
            finished += 1
    if report.failed and batch.fail_fast and finished < len(jobs):
        err.print("imfilt: stopped at the first failure (--fail-fast)", markup=False)


class _progress:
    """A rich progress bar on stderr when it is a terminal and not --quiet; otherwise nothing."""

    def __init__(self, batch: Batch, total: int):
        self.enabled = err.is_terminal and not batch.quiet and total > 1
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        rate = TextColumn("{task.fields[rate]}")
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), rate,
                            TimeRemainingColumn(), console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task("imfilt", total=self.total, rate="")

        def advance():
            self.bar.advance(task)
            speed = self.bar.tasks[0].speed
            self.bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

        return advance

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


def main() -> None:
    """Console entry point."""
    app()


from . import commands  # noqa: E402,F401  (registers the commands on app)
