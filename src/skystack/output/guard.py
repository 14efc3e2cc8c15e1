"""The one guard every run passes before it reads a frame, and the mark on what skystack writes.

A run lists every path it may write — the image and its side files, the report, the
journal and cache folders — and hands them, with every file it reads, to
:func:`guard_outputs` before it reads a frame. The guard refuses (``OutputError``, exit 6,
one line naming the file) a path that *is* an input (the same file, also through a
symbolic or hard link), two outputs landing on one path, a folder the run would fill and
remove that holds an input, and a destination that cannot be written (a parent that is a
file, a folder without write permission). So nothing is read, nothing is written and no
journal is left when a run is refused.

Products (stacks, coverage maps, previews, plots, sharpened and balanced images) carry a
mark: the FITS card ``SKYPROD = T``, the PNG text chunk ``Software: skystack ...``, the
TIFF tag ``Software = skystack ...``. :func:`is_product` reads it (a few hundred bytes
per file), so input discovery can leave out what an earlier run wrote into the lights
folder while keeping every real frame, whatever it is called. Calibrated lights and
masters are frames, not products, and carry no mark.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Iterable, Sequence

from .. import __version__
from ..errors import OutputError

PathLike = str | os.PathLike

PRODUCT_CARD = "SKYPROD"  # FITS keyword of the mark; value T
PRODUCT_COMMENT = "skystack product, not a light frame"
SOFTWARE = f"skystack {__version__}"  # PNG tEXt "Software" / TIFF tag 305; the mark is the prefix
_SOFTWARE_PREFIX = b"skystack"

# A FITS primary header longer than this many 2880-byte blocks (360 cards) was not written
# by skystack, whose headers hold a few dozen cards and put the mark first.
_MAX_FITS_BLOCKS = 10
# PNG chunks before the first IDAT are few and small; this bounds the bytes read.
_MAX_PNG_CHUNKS = 32


# -- the guard --------------------------------------------------------------------------
def guard_outputs(files: Iterable[tuple[str, PathLike]], inputs: Iterable[PathLike], *,
                  folders: Iterable[tuple[str, PathLike]] = ()) -> None:
    """Refuse a run whose outputs would replace an input or cannot be written.

    Call it once, before any frame is read, with every path the run may write.

    Parameters
    ----------
    files
        ``(role, path)`` of every file the run may create or replace (``("report",
        "out.fits.report.json")``); the role names it in the message.
    inputs
        Every file the run reads: frames, calibration frames, list files. Paths that do
        not exist are ignored.
    folders
        ``(role, path)`` of folders the run may create, fill and delete (its journal, its
        cache): none may hold an input, nor be a file.

    Raises
    ------
    OutputError
        One line naming the path and what is wrong; nothing has been written.
    """
    files = [(role, Path(p)) for role, p in files]
    folders = [(role, Path(p)) for role, p in folders]
    ids = {}
    real_inputs = []
    for p in inputs:
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue  # an input that does not exist cannot be overwritten
        ids[(st.st_dev, st.st_ino)] = os.fspath(p)
        real_inputs.append(os.path.realpath(p))

    seen: dict[str, str] = {}
    for role, path in files:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen and seen[key] != role:
            raise OutputError(f"{path}: the {seen[key]} and the {role} would both be written here; "
                              "choose another name for one of them")
        seen[key] = role
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:  # a parent that is a file: ENOTDIR; no permission to look: EACCES
            st = None
            if not isinstance(e, NotADirectoryError):
                raise OutputError(f"{path} ({role}): cannot be written ({_why(e)})") from None
        if st is not None:
            same = ids.get((st.st_dev, st.st_ino))
            if same is not None:
                also = "" if os.path.abspath(same) == os.path.abspath(path) else f" (the same file as {same})"
                raise OutputError(f"{path} ({role}): is one of the inputs{also}; refusing to overwrite an "
                                  "input, nothing was written")
            if os.path.isdir(path):
                raise OutputError(f"{path} ({role}): is a folder; give a file name")
            if not stat.S_ISREG(st.st_mode) and stream_target(path) is None:
                # a disk, /dev/mem, a socket: never written, and never replaced by a file
                raise OutputError(f"{path} ({role}): is {_kind(st.st_mode)}, not a file; refusing to write "
                                  "into it (a file, /dev/null, a pipe or a terminal can be)")
        _check_writable(path.parent, path, role)

    for role, folder in folders:
        try:
            st = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as e:  # its name too long (the output's plus ".skystack-journal"), EACCES
            raise OutputError(f"{folder} ({role}): cannot be made ({_why(e)})") from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{folder} ({role}): exists and is not a folder; move it away or choose "
                              "another output name")
        real = os.path.realpath(folder)
        inside = next((p for p in real_inputs if _within(p, real)), None)
        if inside is not None:
            raise OutputError(f"{folder} ({role}): holds the input {inside}; skystack fills and removes "
                              "this folder, so it refuses to run")
        # not checked for write permission: such a folder is made only when needed (a cache
        # for FITS frames never is), beside files whose folders are checked above


def stream_target(path: Path) -> str | None:
    """What ``path`` is when it is a stream rather than a file: ``"/dev/null"``, ``"a pipe"``
    or ``"a terminal"`` (``--report /dev/stdout``), else None. Such a path is written into:
    renaming a temporary file onto it replaced the device node itself (as root, /dev/null
    became a regular file) or the /dev/stdout link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISFIFO(st.st_mode):
        return "a pipe"
    if not stat.S_ISCHR(st.st_mode):
        return None
    if st.st_rdev == os.makedev(1, 3):
        return "/dev/null"
    # a terminal by its device number, never by opening it (closing a tape drive opened for
    # writing writes a file mark): Linux's ttys and consoles are majors 4 and 5, its
    # pseudo-terminals 136 to 143; elsewhere only /dev/null and pipes are streams
    major = os.major(st.st_rdev)
    return "a terminal" if sys.platform.startswith("linux") and (major in (4, 5) or 136 <= major <= 143) else None


def _kind(mode: int) -> str:
    return ("a block device" if stat.S_ISBLK(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a special file")


def _why(e: OSError) -> str:
    if e.errno == errno.ENAMETOOLONG:
        return f"{e.strerror}: {len(os.path.basename(e.filename or '').encode())} bytes, " \
               "where file systems allow 255; choose a shorter output name"
    return e.strerror or str(e)


def _within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _check_writable(folder: Path, path: Path, role: str) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder we may create files in."""
    anc = folder if str(folder) else Path(".")
    while not anc.exists():
        if anc.is_symlink():
            raise OutputError(f"{path} ({role}): {anc} is a broken link")
        parent = anc.parent
        if parent == anc:
            break
        anc = parent
    if not anc.is_dir():
        raise OutputError(f"{path} ({role}): cannot be created, {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{path} ({role}): the folder {anc} is not writable")


def frame_files(frames) -> list[str]:
    """Every file a frame set reads (its frame files, readable or not)."""
    return sorted({frames.path(i) for i in range(len(frames))})


# -- the product mark -------------------------------------------------------------------
def is_product(path: PathLike) -> bool:
    """Whether skystack wrote ``path`` as a product (a stack, coverage map, preview, plot,
    sharpened or balanced image), as opposed to a frame. Reads at most a few kB; a file
    that cannot be read is not a product."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    try:
        if ext in (".fits", ".fit", ".fts"):
            return _fits_marked(path)
        if ext == ".png":
            return _png_marked(path)
        if ext in (".tif", ".tiff"):
            return _tiff_marked(path)
    except Exception:  # noqa: BLE001 - tifffile, given a corrupt file, raises TypeError,
        # KeyError, struct.error, IndexError, ...: whatever it is, the reader says it later
        return False
    return False


def _fits_marked(path: PathLike) -> bool:
    with open(path, "rb") as f:
        for _ in range(_MAX_FITS_BLOCKS):
            block = f.read(2880)
            if len(block) < 2880:
                return False
            for k in range(0, 2880, 80):
                card = block[k:k + 80]
                key = card[:8].rstrip()
                if key == b"END":
                    return False
                if key == PRODUCT_CARD.encode() and card[8:10] == b"= ":
                    return card[10:].split(b"/", 1)[0].strip() == b"T"
    return False


def _png_marked(path: PathLike) -> bool:
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
        for _ in range(_MAX_PNG_CHUNKS):
            head = f.read(8)
            if len(head) < 8:
                return False
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND"):
                return False
            if kind == b"tEXt" and length < 4096:
                key, _, value = f.read(length).partition(b"\0")
                if key == b"Software" and value.startswith(_SOFTWARE_PREFIX):
                    return True
                f.seek(4, os.SEEK_CUR)  # CRC
            else:
                f.seek(length + 4, os.SEEK_CUR)
    return False


def _tiff_marked(path: PathLike) -> bool:
    import tifffile  # only when a TIFF is among the candidates

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags.get(305)
        value = tag.value if tag is not None else ""
    if isinstance(value, bytes):
        return value.startswith(_SOFTWARE_PREFIX)
    return str(value).encode("utf-8", "replace").startswith(_SOFTWARE_PREFIX)


def marked_png_pieces(png: bytes | memoryview) -> tuple[memoryview, bytes, memoryview]:
    """``png`` (a complete PNG file) with the ``Software: skystack`` text chunk after IHDR,
    as three pieces to write one after the other: the head up to IHDR's end, the chunk, the
    rest (views of ``png``: no copy of an image-sized buffer)."""
    import zlib

    view = memoryview(png).cast("B")
    if bytes(view[12:16]) != b"IHDR":
        raise ValueError("not a PNG stream starting with IHDR")
    data = b"Software\0" + SOFTWARE.encode("ascii")
    chunk = len(data).to_bytes(4, "big") + b"tEXt" + data + zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    end = 8 + 8 + int.from_bytes(view[8:12], "big") + 4  # signature, IHDR length/type, data, CRC
    return view[:end], chunk, view[end:]


__all__: Sequence[str] = ["guard_outputs", "frame_files", "is_product", "marked_png_pieces", "PRODUCT_CARD",
                          "PRODUCT_COMMENT", "SOFTWARE"]
