"""Decompression bombs beyond PNG and deflate TIFF (issue 18, item 1): every byte inflated is bounded
by what the header says, whole and streamed, run by the imfilt command under a hard address-space
limit (RLIMIT_AS). What each reader does with a file that holds more than its header says:

- TIFF tiles and strips (PackBits, LZMA; deflate in test_hostile.py): read as the header says,
  exit 0, nothing on stderr (as libtiff does for the 8-bit ones that Pillow reads).
- zarr chunks (zstd, gzip, zlib, Blosc; v2 and v3): refused in one line, exit 1.
- kernel files: a .npz whose header claims a huge array, and a text file of millions of lines,
  are exit 2 in one line, their size checked before anything is allocated for them.
"""

import time

import numpy as np
import pytest
from PIL import Image

import bombs
from limits import run_limited

LIMIT_MB = 600  # python, numpy, scipy, OpenCV and libvips take ~450 MB of address space
ZARR_LIMIT_MB = 1000  # ... and zarr's threads more (as in test_fuzz.py): the bomb inflated twice is 1 GiB
BIG = 2**29  # what each bomb inflates to: 512 MiB


@pytest.mark.parametrize("memory", ["2G", "1K"], ids=["whole", "streamed"])
@pytest.mark.parametrize("depth", [16, 8])
@pytest.mark.parametrize("codec", ["packbits", "lzma"])
def test_a_packbits_or_lzma_tiff_tile_bomb_is_read_as_its_header_says(tmp_path, codec, depth, memory):
    """A 256x256 tile that inflates to 512 MiB: tifffile's own decoders (no imagecodecs) inflated it
    whole (LZMA: 1.1 GB) or into a list of ints (PackBits: 4.7 GB); 16-bit TIFFs whole, and every
    streamed one, go through them. Now they stop at the tile's size: exit 0, silent, zeros."""
    path = bombs.tiff_codec_bomb(tmp_path / "bomb.tif", BIG, codec, depth=depth)
    out = tmp_path / "out.tif"
    start = time.monotonic()
    done, peak = run_limited(LIMIT_MB, "apply", path, "-k", "box", "-o", out, "--memory", memory, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert time.monotonic() - start < 60
    import tifffile

    result = tifffile.imread(out)
    assert result.shape[:2] == (256, 256) and not result.any()


ZARR_BOMBS = [("zstd", 3), ("gzip", 3), ("blosc", 3), ("zlib", 2), ("blosc", 2), ("zstd", 2)]


@pytest.mark.parametrize("memory", ["2G", "1K"], ids=["whole", "streamed"])
@pytest.mark.parametrize("codec, zarr_format", ZARR_BOMBS, ids=[f"v{f}-{c}" for c, f in ZARR_BOMBS])
def test_a_zarr_chunk_bomb_is_refused_in_one_line(tmp_path, codec, zarr_format, memory):
    """A 64x64 chunk (4 KiB) that inflates to 512 MiB (Blosc: 128 MiB): zarr inflated it whole, twice
    over (1.1 GB), before it found the chunk too large. Now it is refused at the chunk's size (and
    an eighth, and 4 KiB): one line naming the store, exit 1, nothing written."""
    inflated = 2**27 if codec == "blosc" else BIG
    path = bombs.zarr_chunk_bomb(tmp_path / "bomb.zarr", inflated, codec, zarr_format=zarr_format)
    out = tmp_path / "out.tif"
    done, peak = run_limited(ZARR_LIMIT_MB, "apply", path, "-k", "box", "-o", out, "--memory", memory, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{path}: truncated or corrupt zarr chunk (") and "past the 8704 bytes" in lines[0]
    assert "Traceback" not in done.stderr and not out.exists() and not list(tmp_path.glob(".out*"))
    assert peak < 300, peak  # MiB: python and its libraries, no chunk


@pytest.mark.parametrize("kind", ["v3-zstd", "v3-gzip", "v3-blosc", "v3-sharded", "v3-gzip-zstd", "v2-zlib",
                                  "v2-blosc", "v2-lzma", "v2-bz2", "v2-lz4", "v2-none", "v3-crc32c"])
def test_every_zarr_codec_still_reads_a_well_formed_store(tmp_path, kind):
    """The bound changes nothing in a store whose chunks hold what they should."""
    import numcodecs
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

    from imfilt.image.omezarr import open_image

    options = {"v3-zstd": {"compressors": [ZstdCodec()]}, "v3-gzip": {"compressors": [GzipCodec()]},
               "v3-blosc": {"compressors": [BloscCodec()]}, "v3-sharded": {"shards": (64, 64, 3)},
               "v3-gzip-zstd": {"compressors": [GzipCodec(), ZstdCodec()]},
               "v3-crc32c": {"compressors": [ZstdCodec(), Crc32cCodec()]},
               **{f"v2-{name}": {"compressors": codec, "zarr_format": 2} for name, codec in
                  (("zlib", numcodecs.Zlib()), ("blosc", numcodecs.Blosc()), ("lzma", numcodecs.LZMA()),
                   ("bz2", numcodecs.BZ2()), ("lz4", numcodecs.LZ4()), ("none", None))}}[kind]
    pixels = np.random.default_rng(0).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    array = zarr.create_array(tmp_path / "s.zarr", shape=pixels.shape, chunks=(32, 32, 3), dtype="uint8", **options)
    array[:] = pixels
    assert np.array_equal(open_image(str(tmp_path / "s.zarr"))[0:100, 0:90], pixels)


@pytest.mark.parametrize("codec", ["packbits", "lzma"])
def test_the_bounded_tiff_decoders_read_what_tifffile_reads(codec):
    """Against tifffile's own fallback decoders, on random and repetitive segments."""
    import lzma

    from tifffile import _imagecodecs as fallback

    from imfilt.inflate import unpack_bits_at_most, unxz_at_most

    rng = np.random.default_rng(1)
    raw = np.concatenate([rng.integers(0, 256, 3000), np.zeros(1000), rng.integers(0, 3, 2000)]).astype(np.uint8).tobytes()
    if codec == "packbits":
        packed = b"".join(bytes([n - 1]) + raw[i : i + n] for i, n in zip(range(0, len(raw), 97), [97] * 70))
        packed += b"\x80" + b"\xfa\x07"  # a no-op, then one byte 7 times
        assert unpack_bits_at_most(packed, out=10**6) == fallback.packbits_decode(packed)
        assert unpack_bits_at_most(packed, out=100) == fallback.packbits_decode(packed)[:100]
        assert unpack_bits_at_most(b"\x05ab", out=10) == b"ab"  # a literal cut short: what is there
    else:
        packed = lzma.compress(raw)
        assert unxz_at_most(packed, out=10**6) == fallback.lzma_decode(packed) == raw
        assert unxz_at_most(packed, out=100) == raw[:100]


# --- kernel files --------------------------------------------------------------------------------


def _image(work):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(work / "good.png")


def test_an_npz_kernel_claiming_a_huge_array_is_exit_2_unallocated(tmp_path, monkeypatch):
    """A 310-byte .npz whose weight.npy header claims (1000, 4097, 4097) float64: np.load allocated
    125 GiB before reading ('internal error: MemoryError', exit 1)."""
    import io
    import zipfile

    monkeypatch.chdir(tmp_path)
    _image(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1000, 4097, 4097)})
    with zipfile.ZipFile("claim.npz", "w") as archive:
        archive.writestr("weight.npy", header.getvalue() + bytes(64))
    done, _ = run_limited(LIMIT_MB, "apply", "good.png", "-k", "claim.npz", "-o", "o.png", timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("imfilt: claim.npz: ") and "its header says 134283272128 bytes" in done.stderr
    assert not (tmp_path / "o.png").exists()


def test_an_npz_kernel_still_reads_as_np_load_does(tmp_path):
    from imfilt.ops.kernels import load_kernels

    weight = np.random.default_rng(2).random((2, 3, 5, 4))
    np.savez(tmp_path / "layer.npz", weight=weight, bias=np.array([0.5, -1.0]))
    np.savez_compressed(tmp_path / "small.npz", weight=np.asfortranarray(weight[0, 0]))
    kernels = load_kernels(str(tmp_path / "layer.npz"))
    assert [k.bias for k in kernels] == [0.5, -1.0] and np.array_equal(kernels[1].weights, weight[1])
    assert np.array_equal(load_kernels(str(tmp_path / "small.npz"))[0].weights, weight[0, 0])


def test_a_text_kernel_of_millions_of_lines_is_refused_before_it_is_split(tmp_path, monkeypatch):
    """21 million lines of '12' (63 MB, under the 64 MiB a text kernel may take): 3.6 GB and 14 s
    to be split into lines, before the rows were counted."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path)
    (tmp_path / "lines.txt").write_text("12\n" * 21_000_000)
    start = time.monotonic()
    done, peak = run_limited(LIMIT_MB, "apply", "good.png", "-k", "lines.txt", "-o", "o.png", timeout=120)
    assert done.returncode == 2 and done.stderr == ("imfilt: lines.txt: 21000000 lines is more than a text kernel file "
                                                    "may have (65552): give large kernels as .npy\n"), done.stderr
    assert time.monotonic() - start < 20


def test_a_large_text_kernel_parses_in_seconds(tmp_path):
    """A 3000x3000 text kernel took 19 s to parse, token by token; numpy's reader takes ~2 s."""
    from imfilt.ops.kernels import load_kernels

    weights = np.random.default_rng(3).integers(-9, 10, (3000, 3000))
    np.savetxt(tmp_path / "k.txt", weights, fmt="%d")
    start = time.monotonic()
    kernel = load_kernels(str(tmp_path / "k.txt"))[0]
    assert np.array_equal(kernel.weights, weights) and time.monotonic() - start < 8


@pytest.mark.parametrize("text, message", [
    ("1 2\n3 1/0\n", "k.txt:2:3: '1/0' is not a number"),
    ("1 2\n3 inf\n", "k.txt:2:3: 'inf' is not a finite number"),
    ("1 2\n3\n", "k.txt:2: row has 1 values, the rows above have 2"),
    ("1, 2\n3 x\n", "k.txt:2:3: 'x' is not a number"),
])
def test_a_text_kernel_that_numpy_cannot_read_is_still_told_where(tmp_path, text, message):
    from imfilt.errors import KernelError
    from imfilt.ops.kernels import load_kernels

    (tmp_path / "k.txt").write_text(text)
    with pytest.raises(KernelError) as raised:
        load_kernels(str(tmp_path / "k.txt"))
    assert str(raised.value).endswith(message), str(raised.value)
    (tmp_path / "f.txt").write_text("1/2, 1/4\n  0.5 1e-3 # note\n")
    assert load_kernels(str(tmp_path / "f.txt"))[0].weights.tolist() == [[0.5, 0.25], [0.5, 0.001]]
