"""--dry-run: the plan a run would carry out, and nothing else (no image decoded, no file written).

For each input: its size (read from the file's header only) or why it would fail, and each
output it would get, skipped or made, with the method and the cost model's reasons; for an image
too large for memory, how it streams (windows, the budget, the FFT's scratch space), or why it
would fail as the run would (an output that cannot be streamed, an input that cannot be read in
tiles, too little scratch space). Then the engine, the workers or the scheduler, and the
estimated peak memory for the largest input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError, one_line, shown
from ..image.omezarr import is_store
from .. import montage
from .pipeline import json_line
from .planning import banded_memory, one_band, stream_groups
from .tiled import banded_window, check_tiled_output, shared_window
from ..image.tiles import image_shape, open_source

# Peak memory of Python and the libraries, above which each operation says its own (peak_bytes),
# from the max RSS of `imfilt` runs (GNU time -f %M)
BASE_BYTES = 60 * 2**20
FFT_BYTES_PER_SAMPLE = 24  # an operation that does not say (a whole-image FFT's worth)
# A streamed job holds its --memory budget above the same command's peak on a tiny streamed image
# (libraries, zarr's and the FFT's threads): 103 MiB (GNU time -f %M, spectrum, lowpass and apply)
STREAMED_BASE_BYTES = 103 * 2**20


def method_and_why(op) -> tuple[str, str]:
    """The method an operation runs and the reason (each operation explains itself)."""
    return op.explain() if hasattr(op, "explain") else ("-", "")


def peak_bytes(shape: tuple[int, int, int], ops) -> int:
    """Estimated peak memory of one job: the heaviest of its operations (they run one after another)."""

    def need(op) -> int:
        if hasattr(op, "peak_bytes"):
            return op.peak_bytes(shape)
        return FFT_BYTES_PER_SAMPLE * shape[0] * shape[1] * shape[2]

    return BASE_BYTES + max(need(op) for op in ops)


def montage_bytes(shape: tuple[int, int, int], ops) -> int:
    """--montage: its grid and the cells kept for it, ~2.5 bytes per 8-bit sample of the grid
    (8 maps of 4096x4096: +160 MB for a 8190x8190 grid, measured)."""
    grid = montage.layout([op.output_shape(*shape[:2]) for op in ops])
    channels = max(1 if op.gray or op.kernel.summed else shape[2] for op in ops)  # a layer's maps are grey
    return int(2.5 * grid.shape[0] * grid.shape[1] * channels)


def probe(job) -> tuple[tuple[int, int, int] | None, str | None]:
    """(height, width, channels) from the file's header, or why it cannot be read; nothing decoded.

    What planning refused (job.refused) is what the run reports for this input.
    """
    source = job.source
    if source == "-":
        return None, None  # standard input is not read in a dry run
    if job.refused:
        return None, job.refused.removeprefix(f"{shown(source)}: ")
    path = Path(source)
    if path.is_dir() and not is_store(path):
        return None, "is a directory"
    try:
        shape = image_shape(source)
    except InputError as exc:  # changed since planning
        return None, str(exc).removeprefix(f"{shown(source)}: ")
    return (shape, None) if shape else (None, "not an image, or a format imfilt cannot read")


def describe(jobs: list, expanded, workers: int, scheduler: str | None, engine: str) -> tuple[list[dict], dict]:
    """The plan as records (one per output, or per input that would fail) and a summary."""
    records, largest = [], None
    for item, why in expanded.empty:
        records.append({"input": item, "refused": why})
    for job in jobs:
        shape, error = probe(job)
        if all(o.skip for o in job.outputs):
            error = None  # the run skips it unread
        streams = {}
        if not error and job.tiled and job.montage and not job.montage.skip:
            error = "too large for memory (see --memory), and --montage needs the maps of images that fit in memory"
        todo = [o for o in job.outputs if not o.skip]
        if not error and job.tiled:
            try:
                groups = stream_groups(todo, shape, job.settings.memory) if not scheduler else [[o] for o in todo]
                streams = {o.path: streamed(job, o, shape, scheduler, group) for group in groups for o in group}
            except (InputError, UsageError) as exc:  # the run fails this input, and goes on with the rest
                error = str(exc).removeprefix(f"{shown(job.source)}: ")
        if error:
            records.append({"input": job.source, "refused": error})
            continue
        if job.banded and shape:  # it fits, but goes in bands (of a whole decode where its file does not stream)
            window = banded_window([o.op for o in todo], shape, banded_memory(job.settings, len(todo)), one_band(shape))
            height = todo[0].op.output_shape(*shape[:2])[0]
            streams = {o.path: {"window": [min(window[0], height), window[1]], "banded": True,
                                "bands": -(-height // window[0])} for o in todo}
        for output in job.all_outputs:
            method, why = method_and_why(output.op) if output is not job.montage else (
                "montage", f"the {len(job.outputs)} maps above in a near-square grid")
            record = {"input": job.source, "output": output.path, "op": output.op.name, "method": method, "why": why,
                      "skipped": output.skip}
            record.update({f"{name}_output": path for name, path in output.extras})
            if shape:
                record["shape"] = list(shape)
            if output.path in streams:
                record["streamed"] = streams[output.path]
            records.append(record)
        if shape and (largest is None or np.prod(shape) > np.prod(largest[1])):
            peak = (STREAMED_BASE_BYTES + job.settings.memory if job.tiled
                    else min(STREAMED_BASE_BYTES + banded_memory(job.settings, len(todo)),  # a small image: one band
                             peak_bytes(shape, [o.op for o in job.outputs])) if job.banded
                    else peak_bytes(shape, [o.op for o in job.outputs]))
            if job.montage and not job.montage.skip and not job.tiled:
                peak += montage_bytes(shape, [o.op for o in job.outputs])
            largest = (job.source, shape, peak, job.tiled)
    summary = {"inputs": len(jobs) + len(expanded.empty), "outputs": sum(1 for r in records if "output" in r and not r["skipped"]),
               "skipped": sum(1 for r in records if r.get("skipped")), "refused": sum(1 for r in records if "refused" in r),
               "engine": engine, "workers": workers if not scheduler else None, "scheduler": scheduler}
    if largest:  # per job: each worker process holds one image at a time
        summary.update(largest_input=largest[0], largest_shape=list(largest[1]), peak_memory_mb=round(largest[2] / 2**20),
                       largest_streamed=largest[3])
    return records, summary


def streamed(job, output, shape, scheduler: str | None, sharing: list) -> dict:
    """How a job too large for memory streams this output (``sharing``: the outputs
    that share its decode, itself included); an InputError where the run would fail.

    The run's own checks: the output's format, the input opened for tiles (its header only),
    and for spectrum and lowpass the free space where the scratch goes.
    """
    from . import tiled_fft

    memory = job.settings.memory
    check_tiled_output(job.source, output)
    open_source(job.source).close()
    facts = {"memory_bytes": memory}
    if output.op.runner == "windows":
        return {**facts, "window": list(shared_window([o.op for o in sharing], shape, memory))}
    band, block, _ = tiled_fft.passes(shape, output.op, memory)
    folder, needed, free = tiled_fft.scratch_space(shape, output.op, output.path, job.settings.temp_dir, bool(scheduler))
    if needed > free and not scheduler:  # a cluster's workers write it on their own storage
        raise InputError(f"{shown(job.source)}: {tiled_fft.scratch_problem(folder, needed, free, False)}")
    return {**facts, "band_rows": band, "block_columns": block, "scratch_bytes": needed, "scratch_dir": folder,
            "scratch_free_bytes": None if scheduler else free}


def _size(n: int) -> str:
    for shift, unit, digits in ((30, "GiB", 2), (20, "MiB", 0)):
        if n >= 2**shift:
            return f"{n / 2**shift:.{digits}f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def _streamed_line(facts: dict) -> str:
    if facts.get("banded"):
        return (f"in bands of {facts['window'][0]} rows, decoded, filtered and encoded at once (an input whose "
                "format does not stream is decoded whole first)")
    budget = f"within --memory {_size(facts['memory_bytes'])}"
    if "window" in facts:
        return f"streamed in windows of {facts['window'][0]}x{facts['window'][1]} pixels, {budget}"
    free = "" if facts["scratch_free_bytes"] is None else f", {_size(facts['scratch_free_bytes'])} free"
    return (f"streamed: row FFTs in bands of {facts['band_rows']} rows, column FFTs in blocks of "
            f"{facts['block_columns']} columns, {budget}; scratch {_size(facts['scratch_bytes'])} in "
            f"{facts['scratch_dir']}{free}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def print_plan(records: list[dict], summary: dict, as_json: bool) -> int:
    """Print the plan; the exit code the run's planning would give (1 when an input would fail)."""
    if as_json:
        for record in records:
            print(json_line(record))
        print(json_line({"plan": summary}))
    else:
        for record in records:
            if "refused" in record:
                print(one_line(f"{shown(record['input'])}: would fail: {record['refused']}"))
                continue
            height, width, channels = record.get("shape", (0, 0, 0))
            size = f" ({width}x{height}, {_count(channels, 'channel')})" if "shape" in record else ""
            state = "skip (exists)" if record["skipped"] else f"{record['method']}: {record['why']}"
            extras = "".join(f" + {k.removesuffix('_output')} {shown(v)}" for k, v in record.items() if k.endswith("_output"))
            print(one_line(f"{shown(record['input'])}{size} -> {shown(record['output'])}{extras}  [{record['op']}] {state}"))
            streamed = record.get("streamed")
            if streamed and streamed.get("bands", 2) > 1:  # one band: nothing to say
                print(f"  {_streamed_line(streamed)}")
        where = f"on the Dask scheduler {summary['scheduler']}" if summary["scheduler"] else \
            f"{summary['workers']} worker{'s' * (summary['workers'] != 1)} here"
        line = (f"plan: {_count(summary['inputs'], 'input')}, {_count(summary['outputs'], 'output')} to write, "
                f"{summary['skipped']} skipped, {summary['refused']} would fail; engine {summary['engine']}, {where}")
        if "peak_memory_mb" in summary:
            shape = summary["largest_shape"]
            each = " per worker" if summary["scheduler"] or summary["workers"] > 1 else ""
            how = ", streamed: its --memory and the libraries" if summary["largest_streamed"] else ""
            line += (f"; peak memory ~{summary['peak_memory_mb']} MB{each} (the largest input, {shown(summary['largest_input'])}, "
                     f"{shape[1]}x{shape[0]}x{shape[2]}{how})")
        print(one_line(line + ". Nothing was written (--dry-run)."))
    return 1 if summary["refused"] else 0
