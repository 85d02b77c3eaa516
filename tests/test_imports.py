"""A light start: the CLI imports only what the command in hand uses (python -X importtime, in a fresh process).

scipy is for FFT and ndimage work, tifffile, zarr and pyvips for those formats, dask for --scheduler:
a plain PNG filtered through OpenCV never pays for them (scipy.ndimage alone took 0.2 s of a 0.5 s start).
"""

import subprocess
import sys

import pytest

# the GPU libraries too: cupy is imported only when a run asks for the GPU (and --engine auto only for large FFT work)
HEAVY = {"scipy", "zarr", "pyvips", "dask", "distributed", "tifffile", "numcodecs", "pyfftw", "cupy", "cupyx"}


def imported(code: str, cwd=None) -> set[str]:
    """The top-level packages a fresh interpreter imports running ``code``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_importtime_lists_what_is_imported():
    """The parser sees a package that is imported (else the guards below would pass on nothing)."""
    assert "scipy" in imported("import scipy.ndimage")


def test_version_imports_no_library_at_all():
    """`imfilt --version` answers before the app is built: not even numpy or typer (0.03 s against 0.36 s)."""
    assert imported("import sys; sys.argv = ['imfilt', '--version']; from imfilt.cli.main import main; main()") & (
        HEAVY | {"numpy", "typer", "rich", "cv2", "PIL"}) == set()


def test_version_is_the_apps_own():
    """The fast answer is what the Typer app's --version prints."""
    from typer.testing import CliRunner

    from imfilt import __version__
    from imfilt.cli.main import app

    fast = subprocess.run([sys.executable, "-m", "imfilt", "--version"], capture_output=True, text=True)
    assert fast.stdout == CliRunner().invoke(app, ["--version"]).stdout == f"imfilt {__version__}\n"


def test_the_library_is_imported_as_used():
    """`import imfilt` is light; each name of the API comes from its module on first use."""
    assert imported("import imfilt") & (HEAVY | {"numpy"}) == set()
    import imfilt

    for name in imfilt.__all__:
        assert getattr(imfilt, name).__name__ == name
    import imfilt.ops.convolution  # the module that defines convolve does not take its name

    assert callable(imfilt.convolve) and not hasattr(imfilt.convolve, "__file__")


def test_cli_start_imports_no_heavy_library():
    """import imfilt.cli.main (what `imfilt --version` and --help run) imports none of the heavy libraries."""
    assert imported("import imfilt.cli.main") & HEAVY == set()


@pytest.mark.parametrize("args, allowed", [
    (["apply", "in.png", "-k", "box", "-o", "out.png"], set()),
    (["apply", "in.png", "-k", "gaussian:sigma=2", "-k", "sobel", "--out-dir", "out"], set()),
    (["spectrum", "in.png", "-o", "out.png"], {"scipy"}),  # scipy.fft
])
def test_command_imports_only_what_it_uses(tmp_path, small_rgb, args, allowed):
    """A whole CLI call on a PNG imports a heavy library only where its work needs it."""
    (tmp_path / "in.png").write_bytes(small_rgb.read_bytes())
    (tmp_path / "out").mkdir()
    code = f"import sys; from imfilt.cli.main import app; sys.argv = ['imfilt'] + {args!r}; app()"
    assert imported(code, cwd=tmp_path) & HEAVY == allowed


def test_import_contracts_hold():
    """lint-imports (pyproject.toml [tool.importlinter]: the layers, no upward or circular import) passes; .ci/run runs it too."""
    import shutil
    from pathlib import Path

    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    done = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_every_module_has_a_layer():
    """A new module is placed in pyproject.toml's layers contracts: one left out would be checked by nothing.

    The first contract orders the subpackages (imfilt/cli, run, image, ops, engine) and the base modules at the top
    level; the second orders the modules inside each subpackage.
    """
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    outer, inner = (c["layers"] for c in config if c["type"] == "layers")

    def names(layers):
        return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}

    package = root / "imfilt"
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    top = {p.stem for p in package.glob("*.py") if not p.stem.startswith("__")}
    assert (subpackages | top) - names(outer) == set(), "add these to the first [tool.importlinter] layers in pyproject.toml"
    assert names(outer) - (subpackages | top) == set(), "these layers name no module or subpackage"
    inside = {f"imfilt.{sub}.{p.stem}" for sub in subpackages for p in (package / sub).glob("*.py")
              if not p.stem.startswith("__")}
    assert inside - names(inner) == set(), "add these to the second [tool.importlinter] layers in pyproject.toml"
    assert names(inner) - inside == set(), "these layers name no module"
