"""Video frames (PyAV / FFmpeg): AVI, MP4, MOV, MKV, ... decoded one frame at a time.

A video is never held in memory. Reading frames in order (``read(i)``, ``read(i + 1)``,
...) is one straight decode; reading out of order seeks to the nearest keyframe at or
before the frame and decodes forward from there. Frame positions are identified by
presentation timestamps from a packet index (one demux pass, no decoding), so a seek that
lands on an earlier keyframe than asked is still exact.

Lucky-imaging captures are often monochrome data in a colour container (the camera or
the capture program wrote YUV 4:2:0 with neutral chroma). When the first frames have
neutral chroma (every U and V sample within ``NEUTRAL_CHROMA_DN`` of 128), or the stream
is grey to begin with, frames come back mono ``(H, W)`` through FFmpeg's ``gray``
conversion (the luma plane rescaled to full range); otherwise ``(H, W, 3)`` RGB uint8.
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import BadFrameError
from .base import SourceBase

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg",
                    ".wmv", ".mts", ".m2ts", ".ts", ".flv", ".3gp")

NEUTRAL_CHROMA_DN = 2
MONO_PROBE_FRAMES = 3
# Reading frame i while the decoder stands at frame j < i: decoding the j..i gap is
# cheaper than a seek plus a decode from the keyframe when the gap is short.
FORWARD_DECODE_LIMIT = 32


def _is_mp4_family(format_name: str) -> bool:
    # The MP4/MOV sample tables list every frame, so the header's count is exact there.
    names = set(format_name.split(","))
    return bool(names & {"mp4", "mov", "m4a", "3gp", "3g2", "mj2"})


class VideoSource(SourceBase):
    """One video file, decoded frame by frame.

    Parameters
    ----------
    path : str or path-like
    mono : bool, optional
        Force mono (True) or RGB (False) output; default: detect (see module docstring).
    frame_count, bits : int, optional
        Facts learnt by an earlier opening of the same file (:class:`FrameSet` passes
        them when it reopens a video): with ``frame_count`` the counting pass is skipped,
        with ``mono`` and ``bits`` as well the probe decode.

    Raises
    ------
    BadFrameError
        Not a video FFmpeg can open, no video stream, or no decodable frame.
    """

    sequential = True
    sliceable = False
    thread_safe = False  # one decoder state per source
    bayer = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mono: bool | None = None,
        frame_count: int | None = None,
        bits: int | None = None,
    ):
        import av

        self.path = str(path)
        self.problems: list[str] = []
        if not os.path.exists(self.path):
            raise BadFrameError(self.path, "file does not exist")
        try:
            container = av.open(self.path)
        except Exception as e:
            raise BadFrameError(self.path, f"not a video FFmpeg can open ({e})") from e
        try:
            if not container.streams.video:
                raise BadFrameError(self.path, "file holds no video stream")
            stream = container.streams.video[0]
            self._format_name = container.format.name
            self._codec = stream.codec_context.name
            self._w, self._h = int(stream.codec_context.width), int(stream.codec_context.height)
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else None
            self._time_base = stream.time_base
            header_count = int(stream.frames or 0)
        except BadFrameError:
            container.close()
            raise
        except Exception as e:
            container.close()
            raise BadFrameError(self.path, f"cannot read the video stream ({e})") from e
        container.close()

        self._index: tuple[list[int], list[int]] | None = None  # (display ts, keyframe ts)
        self._index_usable = True
        if frame_count is not None and frame_count > 0:
            self._n = int(frame_count)
        elif header_count > 0 and _is_mp4_family(self._format_name):
            self._n = header_count
        else:
            self._n = self._build_index()
            if header_count > 0 and header_count != self._n:
                self.problems.append(
                    f"container header says {header_count} frames, the stream holds {self._n}; "
                    f"using {self._n}"
                )
        if self._n <= 0:
            raise BadFrameError(self.path, "video holds no frame")

        self._container = None
        self._decoder: Iterator[Any] | None = None
        self._next = 0  # display index of the frame the decoder will produce next
        if mono is not None and bits is not None:
            self._mono, self._bits = bool(mono), int(bits)
        else:
            self._mono, self._bits = self._probe(mono)

    # -- opening ------------------------------------------------------------------------
    def _open(self):
        import av

        container = av.open(self.path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; output order is unchanged
        return container, stream

    def _build_index(self) -> int:
        """Demux once (no decoding): frame count and presentation timestamps."""
        container, stream = self._open()
        ts: list[int] = []
        keys: list[int] = []
        n = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                n += 1
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    self._index_usable = False
                    continue
                ts.append(int(t))
                if packet.is_keyframe:
                    keys.append(int(t))
        except Exception as e:
            raise BadFrameError(self.path, f"cannot read video packets ({e})") from e
        finally:
            container.close()
        display = sorted(ts)
        if len(display) != n or len(set(display)) != n or not keys:
            self._index_usable = False  # no reliable timestamps: seek by decoding from 0
        self._index = (display, sorted(keys))
        return n

    def _probe(self, mono: bool | None) -> tuple[bool, int]:
        container, stream = self._open()
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(frame)
                if len(frames) >= MONO_PROBE_FRAMES:
                    break
        except Exception as e:
            raise BadFrameError(self.path, f"cannot decode the first frames ({e})") from e
        finally:
            container.close()
        if not frames:
            raise BadFrameError(self.path, "no frame could be decoded")
        fmt = frames[0].format
        bits = max((c.bits for c in fmt.components), default=8)
        if mono is not None:
            return mono, bits
        name = fmt.name
        if name.startswith(("gray", "y8", "y16", "ya")):
            return True, bits
        if name.startswith(("yuv", "yuvj", "nv12", "nv21")) and len(frames[0].planes) >= 3:
            return all(self._neutral_chroma(f) for f in frames), bits
        # Packed RGB and anything else: compare the colour planes after conversion.
        for f in frames:
            rgb = f.to_ndarray(format="rgb24").astype(np.int16)
            if (np.abs(rgb[..., 0] - rgb[..., 1]).max() > NEUTRAL_CHROMA_DN
                    or np.abs(rgb[..., 2] - rgb[..., 1]).max() > NEUTRAL_CHROMA_DN):
                return False, bits
        return True, bits

    @staticmethod
    def _neutral_chroma(frame) -> bool:
        mid = 1 << (max(c.bits for c in frame.format.components) - 1)
        for plane_no in (1, 2):
            plane = frame.planes[plane_no]
            itemsize = 2 if frame.format.components[plane_no].bits > 8 else 1
            dtype = np.uint8 if itemsize == 1 else np.uint16
            row = plane.line_size // itemsize
            a = np.frombuffer(memoryview(plane), dtype=dtype).reshape(-1, row)[: plane.height, : plane.width]
            if np.abs(a.astype(np.int32) - mid).max() > NEUTRAL_CHROMA_DN * (mid // 128):
                return False
        return True

    # -- FrameSource --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._h, self._w) if self._mono else (self._h, self._w, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if (self._mono and self._bits > 8) else np.uint8)

    @property
    def is_mono(self) -> bool:
        """True when frames come back mono (grey stream or neutral chroma)."""
        return self._mono

    @property
    def bits(self) -> int:
        """Bits per sample of the decoded stream (8 for most codecs)."""
        return self._bits

    def name(self, i: int) -> str:
        self._check(i)
        return f"{self.path}#{i}"

    def meta(self, i: int) -> dict[str, Any]:
        self._check(i)
        m: dict[str, Any] = {"codec": self._codec, "frame_count": self._n}
        if self._fps:
            m["fps"] = self._fps
        if self._index is not None and self._index_usable:
            display = self._index[0]
            m["time_s"] = float((display[i] - display[0]) * self._time_base)
        return m

    def read(self, i: int) -> np.ndarray:
        self._check(i)
        try:
            frame = self._frame_at(i)
        except BadFrameError:
            self._reset()
            raise
        except Exception as e:
            self._reset()
            raise BadFrameError(self.path, f"cannot decode frame {i} ({e})") from e
        return self._convert(frame, i)

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        return self.read(i)[max(0, y0):max(0, y1)].copy()

    def iter_frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames ``start..stop-1`` in one sequential pass, yielding ``(i, frame)``.

        A frame that cannot be decoded or converted (e.g. a size change) is yielded as the
        :class:`BadFrameError` instance instead of an array, so one bad frame does not end
        the pass.
        """
        stop = self._n if stop is None else min(stop, self._n)
        for i in range(max(0, start), stop):
            try:
                yield i, self.read(i)
            except BadFrameError as e:
                yield i, e  # type: ignore[misc]

    def close(self) -> None:
        self._reset()

    # -- decoding -----------------------------------------------------------------------
    def _reset(self) -> None:
        self._decoder = None
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
        self._container = None
        self._next = 0

    def _start(self, i: int) -> None:
        """Position the decoder so that the next frame it yields is at most frame ``i``."""
        self._reset()
        self._container, stream = self._open()
        self._decoder = self._container.decode(stream)
        self._next = 0
        if i == 0:
            return
        if self._index is None and self._index_usable:
            self._build_index()
        if not self._index_usable or self._index is None:
            return  # decode from the start, counting
        display, keys = self._index
        k = bisect.bisect_right(keys, display[i]) - 1
        if k <= 0 and (not keys or keys[0] <= display[0]):
            return
        self._container.seek(keys[max(k, 0)], stream=stream, backward=True, any_frame=False)
        self._decoder = self._container.decode(stream)
        self._next = -1  # unknown until the first frame's timestamp says

    def _position(self, frame) -> int | None:
        if self._index is None or not self._index_usable or frame.pts is None:
            return None
        display = self._index[0]
        j = bisect.bisect_left(display, int(frame.pts))
        return j if j < len(display) and display[j] == int(frame.pts) else None

    def _frame_at(self, i: int):
        if self._decoder is None or self._next < 0 or not (self._next <= i <= self._next + FORWARD_DECODE_LIMIT):
            self._start(i)
        for attempt in range(2):
            assert self._decoder is not None
            for frame in self._decoder:
                pos = self._position(frame) if self._next < 0 else self._next
                if pos is None:
                    # No timestamp to place the frame after a seek: decode from the start.
                    break
                self._next = pos + 1
                if pos == i:
                    return frame
                if pos > i:
                    break  # the seek overshot (inexact index): decode from the start
            else:
                raise BadFrameError(self.path, f"video ended before frame {i} (decoder stopped at {self._next})")
            if attempt == 0:
                self._reset()
                self._container, stream = self._open()
                self._decoder = self._container.decode(stream)
                self._next = 0
        raise BadFrameError(self.path, f"cannot locate frame {i} in the video stream")

    def _convert(self, frame, i: int) -> np.ndarray:
        if frame.width != self._w or frame.height != self._h:
            raise BadFrameError(
                self.path,
                f"frame {i} is {frame.width}x{frame.height}, the video is {self._w}x{self._h} "
                "(variable frame size)",
            )
        if self._mono:
            return frame.to_ndarray(format="gray16le" if self._bits > 8 else "gray")
        return frame.to_ndarray(format="rgb24")
