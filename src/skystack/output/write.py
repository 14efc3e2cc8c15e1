"""Atomic writers for FITS, TIFF and PNG.

Every file is written to a temporary name in the destination folder and renamed over the
final name only once complete, so a crash or a full disk never leaves a half-written file
under the output name, and an existing output is only replaced by a complete new one.
Inputs are never written: a run hands every path it will write to
:func:`skystack.output.guard.guard_outputs` before it reads a frame; :func:`check_not_input`
checks one path.

astropy (0.32 s to import) and tifffile are imported by the writer that needs them: the
frame readers use :func:`atomic_path` from here, and reading never needs either.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from ..enhance.stretch import autostretch, autostretch_params, levels, to_uint8
from ..errors import OutputError
from .guard import PRODUCT_CARD, PRODUCT_COMMENT, SOFTWARE, guard_outputs, marked_png_pieces, stream_target

FITS_SUFFIXES = (".fits", ".fit", ".fts")  # what write_image writes as FITS

# Outputs are created with mode 0666 less the process umask (0644 under umask 022), as any
# tool's are; tempfile.mkstemp would make them 0600, readable by their owner only.
_FILE_MODE = 0o666


_WHY_NOT = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large for this file system (FAT32: 4 GiB) or the file size limit"}


def why_not_written(e: OSError) -> str:
    """The reason a write failed, in words: the kernel's for a full disk, a quota, a file
    too large; NumPy's short write (no errno) as what it means."""
    if e.errno in _WHY_NOT:
        return _WHY_NOT[e.errno]
    text = e.strerror or str(e)
    if e.errno is None and "requested and" in text and "written" in text:  # ndarray.tofile's short write
        return f"the disk took only part of it: full, or a file size limit ({text})"
    return text


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success,
    delete it on any failure. Failures become :class:`OutputError` naming the file.

    The temporary file is created with mode 0666 less the umask, so the output gets the
    permissions the user's umask asks for (0644 under umask 022)."""
    final = Path(path)
    if stream_target(final) is not None:
        yield from _through_stream(final)
        return
    if final.is_symlink():
        # through the link: renaming onto the link replaced the link itself (a `latest.fits`
        # link became a file; as root, /dev/stdout -> /proc/self/fd/1 became a regular file
        # when stdout was one), and its target kept the old contents
        final = Path(os.path.realpath(final))
    folder = final.parent if str(final.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(folder, final)
    except OSError as e:
        raise OutputError(f"{final}: cannot write in {folder} ({why_not_written(e)})") from e
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OutputError:
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"{final}: could not write ({why_not_written(e)}); nothing was left under that name") from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _through_stream(final: Path) -> Iterator[Path]:
    # written whole to a private temporary file first (some writers seek), then copied into
    # the stream in one pass
    import shutil
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="skystack-") as tmp:
            part = Path(tmp) / f"out{final.suffix}"
            yield part
            with open(part, "rb") as src, open(final, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except OutputError:
        raise
    except OSError as e:  # the temporary folder's disk full, the pipe's reader gone
        raise OutputError(f"{final}: could not write ({why_not_written(e)})") from e


def _owner_tag() -> str:
    """``host-pid`` of this process, as it goes into a temporary name (the host as a short
    hash: a folder on a network share may be written from several machines)."""
    import socket
    import zlib

    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}-{os.getpid()}"


# what the temporary name adds to the output's: ".", ".hhhhhh-<pid>", ".<8 hex>", ".part"
# and the suffix again; file systems allow 255 bytes a name
_TEMP_EXTRA = 48


def _temp_stem(final: Path) -> str:
    """The output's name as its temporary name starts, shortened (with a hash, so outputs
    stay apart) when the whole would pass 255 bytes: a 240-character output name, legal
    itself, failed with "File name too long"."""
    name = final.name
    if len(name.encode()) + _TEMP_EXTRA <= 255:
        return name
    import zlib

    short = name.encode()[:255 - _TEMP_EXTRA - 9].decode("utf-8", "ignore")
    return f"{short}~{zlib.crc32(name.encode()):08x}"


_TEMP_NAME = re.compile(r"^\..+\.([0-9a-f]{6})-(\d+)\.[0-9a-f]{8}\.part(\.[^.]*)?$")
_swept: set[str] = set()  # folders already swept by this process


def _sweep_dead_temps(folder: Path, tag: str) -> None:
    """Remove the temporary files that writes killed with SIGKILL (or a power cut) left in
    ``folder``: they cannot delete their own, and each is as big as its output. Only names
    this host's processes made are judged, by their pid; a live one's, or one whose pid was
    reused, stays. Once per folder and process: a folder of 10 000 calibrated frames is read
    once, not once per frame."""
    key = os.path.realpath(folder)
    if key in _swept:
        return
    _swept.add(key)
    host = tag.split("-", 1)[0]
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        m = _TEMP_NAME.match(e.name)
        if m is None or m.group(1) != host or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # alive (or another user's): not ours to judge
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(e.path)


def _create_temp(folder: Path, final: Path) -> Path:
    # A hidden name (never taken for a frame by input discovery) that no one else holds:
    # O_EXCL fails rather than share a file with another writer. The name carries its
    # writer's host and pid, so a later write of the same output can tell a dead one's.
    tag = _owner_tag()
    _sweep_dead_temps(folder, tag)
    for _ in range(100):
        tmp = folder / f".{_temp_stem(final)}.{tag}.{secrets.token_hex(4)}.part{final.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse to write over an input file (same file, also through links), or where the
    output cannot be written. One output; a run checks all of its outputs at once with
    :func:`skystack.output.guard.guard_outputs`."""
    guard_outputs([("output", output)], inputs)


def write_fits(path: str | os.PathLike, image: np.ndarray, *, header: Any = None,
               history: Iterable[str] = (), product: bool = True) -> Path:
    """Write float32 FITS. Colour (H, W, 3) becomes a 3-plane cube (NAXIS3 = 3, RGB order)
    as Siril writes it. ``header`` is an :class:`astropy.io.fits.Header` (its cards are
    written as they are, comments and HISTORY included: see
    :func:`skystack.output.header.fits_header`) or a dict of cards (keyword → value or
    (value, comment)); HISTORY lines carry the provenance. ``product`` (a stack, not a
    frame: calibrated lights and masters pass False) adds the mark that keeps it out of
    input discovery (:func:`skystack.output.guard.is_product`)."""
    from astropy.io import fits  # 0.32 s to import: only when a FITS is written (see the module notes)

    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3:
        data = np.moveaxis(data, 2, 0)  # (3, H, W): FITS plane per channel
    hdu = fits.PrimaryHDU(data)
    if product:
        hdu.header[PRODUCT_CARD] = (True, PRODUCT_COMMENT)
    if isinstance(header, fits.Header):
        for card in header.cards:
            if card.keyword.upper() not in _LAYOUT_CARDS:
                hdu.header.append(card, end=True)
    else:
        for key, val in (header or {}).items():
            if str(key).upper() not in _LAYOUT_CARDS:
                hdu.header[key] = val
    if data.ndim == 3 and "CTYPE3" not in hdu.header:
        hdu.header["CTYPE3"] = ("RGB", "colour planes R, G, B")
    for line in history:
        for chunk in _chunks(str(line), 70):
            hdu.header.add_history(chunk)
    hdu.verify("silentfix")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(hdu.header.tostring(endcard=True, padding=True).encode("ascii"))
        _write_be_float32(f, data)
    return Path(path)


# Cards that describe the data unit's layout: the writer's own, never taken from a header
# it is given (a frame's BZERO = 32768 copied onto float32 data would shift every value).
_LAYOUT_CARDS = frozenset({"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "NAXIS4", "EXTEND", "BZERO",
                           "BSCALE", "BLANK", "PCOUNT", "GCOUNT", "XTENSION", "END", "GROUPS"})

# Rows of float32 FITS data converted to big-endian at a time (about 1 MB a chunk: the
# write runs beside the preview at the end of a run, whose peak it adds to).
_FITS_CHUNK_VALUES = 1 << 18


def _write_be_float32(f, data: np.ndarray) -> None:
    """The data unit of a float32 image: ``data`` (planes, rows, columns: any strides) as
    big-endian float32 in chunks of rows, padded to a 2880-byte record.

    Written here rather than by ``HDU.writeto``: astropy byteswaps the caller's array in
    place, writes it and swaps it back (three passes over the stack, and the array is
    garbage meanwhile, so nothing else may read it: the preview had to wait); chunk by chunk
    the image is only read, once."""
    planes = data.reshape((-1,) + data.shape[-2:])
    h, w = planes.shape[1:]
    rows = max(1, _FITS_CHUNK_VALUES // max(w, 1))
    for plane in planes:
        for y0 in range(0, h, rows):
            f.write(plane[y0:y0 + rows].astype(">f4"))  # a contiguous copy, written as it is
    tail = (4 * data.size) % 2880
    if tail:
        f.write(b"\0" * (2880 - tail))


def _chunks(s: str, n: int) -> Iterator[str]:
    for i in range(0, max(len(s), 1), n):
        yield s[i:i + n]


def write_tiff(path: str | os.PathLike, image: np.ndarray, *, dtype: str = "float32",
               scale: tuple[float, float] | None = None, description: str | None = None,
               product: bool = True) -> Path:
    """Write TIFF: float32 as is, or uint16 scaled from ``scale=(black, white)`` (default:
    the finite min/max of the image) to 0–65535. NaN becomes 0. A ``product`` carries
    ``Software = skystack`` (see :func:`write_fits`)."""
    import tifffile  # only when a TIFF is written (see the module notes)

    data = np.asarray(image, dtype=np.float32)
    if dtype == "uint16":
        lo, hi = scale if scale is not None else _finite_minmax(data)
        span = (hi - lo) or 1.0
        data = np.clip(np.nan_to_num((data - lo) / span, nan=0.0) * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    elif dtype != "float32":
        raise ValueError(f"tiff dtype must be uint16 or float32, not {dtype!r}")
    photometric = "rgb" if data.ndim == 3 else "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, photometric=photometric, description=description,
                         software=SOFTWARE if product else False)
    return Path(path)


def write_png(path: str | os.PathLike, image8: np.ndarray, *, product: bool = True, bgr: bool = False) -> Path:
    """Write an 8- or 16-bit PNG (RGB order in, converted to OpenCV's BGR; ``bgr``: the
    caller made it in BGR order already); a ``product`` carries the text chunk ``Software:
    skystack`` (see :func:`write_fits`)."""
    data = image8
    if data.ndim == 3 and not bgr:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    del data
    if not ok:
        raise OutputError(f"{path}: PNG encoding failed")
    # written from the encoder's buffer in pieces: a bytes copy, and the marked copy of that,
    # were two more image-sized buffers at the end of a run
    parts = marked_png_pieces(buf) if product else (memoryview(buf),)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
    return Path(path)


def write_preview(path: str | os.PathLike, image: np.ndarray, *, max_side: int = 2048,
                  linked: bool = False) -> Path:
    """A stretched 8-bit PNG preview (Siril-style autostretch), downsized to ``max_side``.
    Colour is stretched per channel unless ``linked`` (see
    :func:`skystack.enhance.stretch.autostretch`).

    The stretch is measured on a subsample of the full image and applied after the
    resize, so a preview of a huge stack costs a small image's memory.
    """
    planes = [image] if image.ndim == 2 or linked else [image[..., c] for c in range(image.shape[2])]
    params = [autostretch_params(p) for p in planes]
    h, w = image.shape[:2]
    f = max_side / max(h, w)
    src = np.asarray(image, dtype=np.float32)
    if f < 1:
        src = cv2.resize(src, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    # stretched strip by strip: the float temporaries of levels() and to_uint8() are a few
    # rows, not whole planes (+120 MB measured for a 1920×1080 RGB stack done at once)
    # colour planes go straight into OpenCV's BGR order (the RGB → BGR copy was another
    # preview-sized buffer beside the FITS write)
    bgr = src.ndim == 3 and src.shape[2] == 3
    out = np.empty(src.shape, dtype=np.uint8)
    for y0 in range(0, src.shape[0], _PREVIEW_ROWS):
        rows = src[y0:y0 + _PREVIEW_ROWS]
        if len(params) == 1:  # mono, or colour stretched linked
            out[y0:y0 + _PREVIEW_ROWS] = to_uint8(levels(rows[..., ::-1] if bgr else rows, *params[0]))
        else:
            for c in range(len(params)):
                out[y0:y0 + _PREVIEW_ROWS, :, 2 - c if bgr else c] = to_uint8(levels(rows[..., c], *params[c]))
    return write_png(path, out, bgr=bgr)


_PREVIEW_ROWS = 128


def write_image(path: str | os.PathLike, image: np.ndarray, *, header: Any = None,
                history: Iterable[str] = (), tiff_dtype: str = "float32", product: bool = True) -> Path:
    """Write by extension: .fits/.fit/.fts (float32), .tif/.tiff, .png (stretched 16-bit)."""
    ext = Path(path).suffix.lower()
    if ext in FITS_SUFFIXES:
        return write_fits(path, image, header=header, history=history, product=product)
    if ext in (".tif", ".tiff"):
        from .header import tiff_description  # astropy: only when a stack is written (module notes)

        return write_tiff(path, image, dtype=tiff_dtype, description=tiff_description(header or {}),
                          product=product)
    if ext == ".png":
        disp = np.nan_to_num(autostretch(image), nan=0.0)
        return write_png(path, np.clip(np.rint(disp * 65535.0), 0, 65535).astype(np.uint16), product=product)
    raise OutputError(f"{path}: unknown output format {ext!r} (use .fits, .tif or .png)")


def _finite_minmax(a: np.ndarray) -> tuple[float, float]:
    f = a[np.isfinite(a)]
    if f.size == 0:
        return 0.0, 1.0
    return float(f.min()), float(f.max())


_FRAMES = "\0frames\0"  # stands for a report's frame list while the rest is indented


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically. A report's ``frames`` list takes one compact
    line per frame, written a line at a time: Python's JSON encoder indents in Python, one
    call per value (0.1 s for 1000 lucky frames, ten times the C encoder's compact lines),
    and the whole text of a 100 000-frame report, held two or three times over while it
    was joined and encoded, had raised a lucky run's peak from 269 to 496 MB."""
    rows = obj.get("frames") if isinstance(obj, dict) else None
    with atomic_path(path) as tmp:
        if not isinstance(rows, list):
            tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
            return Path(path)
        head, tail = json.dumps(dict(obj, frames=_FRAMES), indent=2, allow_nan=False).split(json.dumps(_FRAMES), 1)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head)
            if rows:
                f.write("[\n")
                for k, row in enumerate(rows):
                    f.write((",\n    " if k else "    ") + json.dumps(row, allow_nan=False))
                f.write("\n  ]")
            else:
                f.write("[]")
            f.write(tail + "\n")
    return Path(path)
