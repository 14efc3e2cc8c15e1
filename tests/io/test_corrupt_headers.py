"""Corrupt headers, as a fuzzer makes them: whatever a frame file's first bytes say, opening
and reading it either works or is a BadFrameError / NoFramesError naming the file, never an
exception from a parser (tifffile's TypeError and astropy's KeyError on BITPIX 14 once
crashed whole stacks), and never an allocation the header talked it into."""
from __future__ import annotations

import random
import resource

import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits

from skystack.errors import SkystackError
from skystack.io import open_frames, write_ser
from skystack.output.guard import is_product

_HEADER_BYTES = {"ser": 178, "fits": 2880, "tif": 300, "png": 120}


def _base(kind: str, path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (48, 64)).astype(np.uint8)
    if kind == "ser":
        write_ser(path, [img, img, img])
    elif kind == "fits":
        fits.PrimaryHDU(img.astype(np.uint16) * 100).writeto(path)
    elif kind == "tif":
        tifffile.imwrite(path, img.astype(np.uint16) * 100)
    else:
        cv2.imwrite(str(path), img)


def _mutate(data: bytes, kind: str, r: random.Random) -> bytes:
    b = bytearray(data)
    mode = r.choice(["flip", "int32", "digit", "cut"])
    if mode == "cut":
        return bytes(b[:r.randrange(len(b))])
    for _ in range(r.randint(1, 4)):
        at = r.randrange(min(_HEADER_BYTES[kind], len(b)))
        if mode == "flip":
            b[at] ^= 1 << r.randrange(8)
        elif mode == "digit" and kind == "fits":
            digits = [i for i in range(2880) if chr(b[i]).isdigit()]
            b[r.choice(digits)] = ord(r.choice("0123456789-"))
        else:
            at -= at % 4
            b[at:at + 4] = (r.choice([0, 1, 3, 7, 14, 16, 17, 65535, 100000, 2**31 - 1, -1]) & 0xFFFFFFFF) \
                .to_bytes(4, "little")
    return bytes(b)


@pytest.mark.parametrize("kind", sorted(_HEADER_BYTES))
def test_a_corrupt_header_is_a_bad_frame_or_reads(tmp_path, kind):
    base = tmp_path / f"base.{kind}"
    _base(kind, base)
    data = base.read_bytes()
    r = random.Random(kind)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # a header claiming 2**31 columns must not be believed: 4 GiB more than now is an attack
    resource.setrlimit(resource.RLIMIT_AS, (_vm_now() + (4 << 30), hard))
    try:
        for k in range(60):
            victim = tmp_path / f"v{k}.{kind}"
            victim.write_bytes(_mutate(data, kind, r))
            try:
                _open_and_read(victim)
            except Exception as e:  # noqa: BLE001 - the point of the test
                raise AssertionError(f"mutation {k} of a {kind}: {type(e).__name__}: {e}") from e
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _open_and_read(path) -> None:
    """What a run does with a frame file: the input discovery's product check (never
    raises), then open and read every frame; a SkystackError is the file's fault, said."""
    is_product(path)
    try:
        frames = open_frames([str(path)])
    except SkystackError:
        return
    for i in range(len(frames)):
        try:
            frames.read(i)
        except SkystackError:
            pass


def _vm_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@pytest.mark.parametrize("card,value", [
    ("BITPIX", 14), ("BITPIX", 0), ("BITPIX", -16), ("BITPIX", 128), ("NAXIS", 0), ("NAXIS", 5), ("NAXIS", -1),
    ("NAXIS1", 0), ("NAXIS1", -64), ("NAXIS1", 2**31 - 1), ("NAXIS2", 10**12), ("BZERO", "'abc'"),
    ("BSCALE", 0), ("BLANK", "'x'"),
])
def test_a_fits_card_with_a_wrong_value_is_a_bad_frame_or_reads(tmp_path, card, value):
    base = tmp_path / "base.fits"
    _base("fits", base)
    raw = bytearray(base.read_bytes())
    text = f"{card:8}= {value!s:>20}".ljust(80).encode()
    at = raw.find(f"{card:8}=".encode())
    if at < 0:  # not in the header: over the card before END
        at = raw.find(b"END" + b" " * 77) - 80
    raw[at:at + 80] = text
    victim = tmp_path / "v.fits"
    victim.write_bytes(bytes(raw))
    _open_and_read(victim)
