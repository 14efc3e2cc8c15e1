"""FITS headers of a stack: what was observed (the reference frame's observation cards and
its celestial WCS), when (DATE-OBS, EXPSTART/EXPEND, LIVETIME) and what was done (method,
parameters, frames). Both pipelines build their headers here; :mod:`.write` puts them into
the FITS file or, in short, into a TIFF description.

The output of a stack is on the reference frame's pixel grid (drizzle: that grid made
``scale`` times finer), so the reference frame's WCS applies as is (drizzle: rescaled),
and its observation cards describe the stack as Siril's stacks do: Siril copies the
reference's metadata and WCS and adds STACKCNT, EXPSTART/EXPEND and DATE-OBS
(DeepSkyStacker users asked for the same: DSS issue 197, "DATE-OBS missing in output
file").

Pieces a pipeline assembles (the lucky pipeline as well as the deep-sky one):

* :func:`observation_cards` — the reference frame's observation cards;
* :func:`celestial_wcs` — its celestial WCS, scaled for drizzle;
* :func:`time_cards` — DATE-OBS, DATE-END, EXPSTART, EXPEND, EXPTIME, LIVETIME from the
  stacked frames' start times and exposures (:func:`frame_start_mjd` reads a start time);
* :func:`fits_header` — cards and HISTORY lines into one :class:`astropy.io.fits.Header`.

astropy (0.5 s to import ``astropy.io.fits``, measured on the project's 2-core machine) is
imported by the functions that build a Header, not by this module: the lucky pipeline
imports it and a video run need not pay for it until a header is built.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..options import LuckyOptions, RegisterOptions, StackOptions
from ..types import FrameResult

if TYPE_CHECKING:  # annotations only; astropy is imported where a header is built
    from astropy.io import fits

Cards = dict[str, Any]  # keyword -> value or (value, comment)

# The observation cards copied from the reference frame, with the comment each gets (the
# frame's own comments are not kept by the readers). What describes one sub rather than the
# stack (EXPTIME, EXPOSURE, DATE-OBS, PEDESTAL, TOTALEXP) is not copied: the stack's own
# values are computed (:func:`time_cards`).
OBSERVATION_KEYS: dict[str, str] = {
    "OBJECT": "observed object",
    "TELESCOP": "telescope",
    "INSTRUME": "camera",
    "OBSERVER": "observer",
    "FILTER": "filter",
    "IMAGETYP": "frame type",
    "GAIN": "sensor gain (as the camera wrote it)",
    "OFFSET": "sensor offset setting",
    "EGAIN": "[e-/ADU] electrons per ADU",
    "ISOSPEED": "ISO speed",
    "XPIXSZ": "[um] pixel width",
    "YPIXSZ": "[um] pixel height",
    "XBINNING": "binning in x",
    "YBINNING": "binning in y",
    "CCDXBIN": "binning in x",
    "CCDYBIN": "binning in y",
    "FOCALLEN": "[mm] focal length",
    "FOCRATIO": "focal ratio",
    "APERTURE": "aperture",
    "CCD-TEMP": "[C] sensor temperature (reference frame)",
    "SET-TEMP": "[C] sensor set point",
    "RA": "[deg] pointing right ascension",
    "DEC": "[deg] pointing declination",
    "OBJCTRA": "object right ascension",
    "OBJCTDEC": "object declination",
    "CENTALT": "[deg] altitude of the field centre",
    "CENTAZ": "[deg] azimuth of the field centre",
    "AIRMASS": "airmass (reference frame)",
    "SITELAT": "[deg] site latitude",
    "SITELONG": "[deg] site longitude",
    "SITEELEV": "[m] site elevation",
    "FOCUSPOS": "focuser position",
    "ROWORDER": "order of the rows in the data",
    "EQUINOX": "equinox of RA/DEC",
}
# Cards that describe a colour filter array mosaic: wrong once the stack is RGB.
CFA_KEYS = ("BAYERPAT", "XBAYROFF", "YBAYROFF")

# What a celestial WCS header may hold (astropy's to_header(relax=True) adds time cards
# such as MJDREF or DATE-OBS when the frame had them; those are the stack's, not the WCS's).
_WCS_KEY = re.compile(r"^(WCSAXES|WCSNAME|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CTYPE\d|CROTA\d|PC\d_\d|CD\d_\d|"
                      r"PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|"
                      r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d|A_DMAX|B_DMAX)$")
# The FITS keywords that say an image has a celestial WCS at all.
_CELESTIAL_HINT = ("CTYPE1", "CTYPE2")

_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=timezone.utc)


# -- what was observed ----------------------------------------------------------------
def observation_cards(frame_header: Mapping[str, Any] | None, *, debayered: bool, scale: float = 1.0,
                      has_wcs: bool = False) -> Cards:
    """The reference frame's observation cards (:data:`OBSERVATION_KEYS`).

    Parameters
    ----------
    frame_header
        The frame's header cards (``FrameSet.meta(i)["header"]``); ``None`` or empty for
        formats without one.
    debayered
        The stack is RGB from CFA frames: BAYERPAT and its offsets are left out. A stack of
        undebayered mosaics keeps them.
    scale
        Drizzle scale: the output pixels are ``scale`` times smaller, so XPIXSZ/YPIXSZ are
        divided by it (plate solvers derive the image scale from them and FOCALLEN).
    has_wcs
        The stack gets a WCS: EQUINOX then comes with it.
    """
    h = dict(frame_header or {})
    cards: Cards = {}
    for key, comment in OBSERVATION_KEYS.items():
        if key not in h or (key == "EQUINOX" and has_wcs):
            continue
        value = _card_value(h[key])
        if value is None:
            continue
        if key in ("XPIXSZ", "YPIXSZ") and scale != 1.0 and isinstance(value, (int, float)):
            value = float(value) / scale
            comment = f"[um] pixel size / drizzle scale {scale:g}"
        cards[key] = (value, comment)
    if not debayered:
        for key in CFA_KEYS:
            value = _card_value(h.get(key))
            if value is not None:
                cards[key] = (value, "CFA pattern" if key == "BAYERPAT" else "CFA pattern offset")
    return cards


def celestial_wcs(frame_header: Mapping[str, Any] | None, *, scale: float = 1.0) -> fits.Header | None:
    """The celestial WCS of a frame's header as FITS cards, or ``None`` when it has none.

    ``scale`` > 1 is a drizzle output ``scale`` times finer than the frame: pixel ``P``
    (1-based) of the output spans ``[(P - 1) / scale, P / scale]`` of the frame's pixel
    edges, so ``CRPIX' = scale · (CRPIX − 0.5) + 0.5`` and the matrix (CDELT, or CD) and
    SIP coefficients are rescaled to output pixels. Sky positions do not change.
    """
    h = {k: v for k, v in (frame_header or {}).items() if isinstance(k, str)}
    if not all(k in h for k in _CELESTIAL_HINT):
        return None
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning  # 0.1 s more: only for frames that have a WCS

    hdr = fits.Header()
    for key, value in h.items():
        if _WCS_KEY.match(key):
            v = _card_value(value)
            if v is not None:
                hdr[key] = v
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(hdr)
            if not w.has_celestial:
                return None
            w = w.celestial
            if scale != 1.0:
                w = _scaled(w, scale)
            out = w.to_header(relax=True)
    except Exception:  # a malformed WCS (wcslib's many complaints): the stack goes without one
        return None
    clean = fits.Header()
    for card in out.cards:
        if _WCS_KEY.match(card.keyword):
            clean.append(card)
    return clean


def _scaled(w, scale: float):
    w = w.deepcopy()
    w.wcs.crpix = scale * (np.asarray(w.wcs.crpix) - 0.5) + 0.5
    if w.wcs.has_cd():
        w.wcs.cd = np.asarray(w.wcs.cd) / scale
    else:
        w.wcs.cdelt = np.asarray(w.wcs.cdelt) / scale
    if w.sip is not None:
        # SIP adds f(u, v) = Σ A_pq u^p v^q in frame pixels to the offsets (u, v) from CRPIX;
        # in output pixels (u' = s·u) that is s·f(u'/s, v'/s): A'_pq = A_pq · s^(1-p-q).
        # The inverse (AP, BP) maps the other way, alike.
        from astropy.wcs import Sip

        def rescale(m):
            if m is None:
                return None
            p, q = np.indices(m.shape)
            return np.asarray(m) * scale ** (1.0 - p - q)

        s = w.sip
        w.sip = Sip(rescale(s.a), rescale(s.b), rescale(s.ap), rescale(s.bp), w.wcs.crpix)
    return w


def _card_value(v: Any) -> Any:
    """A header value as FITS can hold it: numbers, booleans and strings; None otherwise."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    s = str(v).strip()
    return s or None


# -- when -------------------------------------------------------------------------------
def frame_start_mjd(meta: Mapping[str, Any]) -> float | None:
    """The start of a frame's exposure as an MJD (UTC), from its metadata
    (``meta["date"]``: FITS DATE-OBS, a RAW file's or a SER frame's timestamp; a date
    without a time takes FITS TIME-OBS), or ``None`` when it is absent or unreadable."""
    text = meta.get("date")
    if not text:
        return None
    text = str(text).strip()
    header = meta.get("header") or {}
    if "T" not in text and header.get("TIME-OBS"):
        text = f"{text}T{str(header['TIME-OBS']).strip()}"
    dt = parse_time(text)
    return None if dt is None else mjd(dt)


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 date-time (FITS DATE-OBS style, UTC unless it says otherwise)."""
    s = text.strip().replace(" ", "T")
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    # Python's fromisoformat takes at most 6 fractional digits; some writers give 7
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", s)
    if m:
        s = f"{m.group(1)}.{m.group(2)[:6].ljust(6, '0')}{m.group(3)}"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def mjd(dt: datetime) -> float:
    """Modified Julian Date of a UTC datetime (leap seconds ignored, as FITS UTC does)."""
    return (dt - _MJD_EPOCH).total_seconds() / 86400.0


def iso_from_mjd(value: float) -> str:
    """FITS DATE-OBS text (UTC, millisecond precision) of an MJD."""
    dt = _MJD_EPOCH + timedelta(days=float(value))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def time_cards(starts_mjd: Sequence[float | None], exposures_s: Sequence[float | None], *,
               date_obs: str = "start") -> Cards:
    """DATE-OBS, DATE-END (and MJD-OBS, MJD-END), EXPSTART, EXPEND, EXPTIME and LIVETIME of
    a stack of frames.

    Parameters
    ----------
    starts_mjd
        Each stacked frame's exposure start (MJD, UTC), ``None`` where unknown.
    exposures_s
        Each stacked frame's exposure in seconds, ``None`` where unknown.
    date_obs
        ``"start"``: DATE-OBS is the earliest frame's start (deep sky, as Siril writes it);
        ``"mid"``: the middle of the stacked frames' span (planetary imaging, where the
        time of a planet's rotation or a transit matters).

    Returns
    -------
    dict
        Only the cards that can be known: no time card without a start time, no
        LIVETIME without exposures. EXPTIME is the mean exposure (the stack is a mean, in
        the units of one frame), LIVETIME their sum.
    """
    cards: Cards = {}
    exp = [float(e) for e in exposures_s if e is not None and math.isfinite(e) and e >= 0]
    if exp:
        cards["EXPTIME"] = (float(np.mean(exp)), "[s] mean exposure of the stacked frames")
        cards["LIVETIME"] = (float(np.sum(exp)), "[s] total exposure of the stacked frames")
    spans = [(s, s + ((e or 0.0) if e is not None and math.isfinite(e) else 0.0) / 86400.0)
             for s, e in zip(starts_mjd, exposures_s) if s is not None and math.isfinite(s)]
    if spans:
        t0 = min(s for s, _ in spans)
        t1 = max(e for _, e in spans)
        if date_obs == "mid":
            cards["DATE-OBS"] = (iso_from_mjd(0.5 * (t0 + t1)), "[UTC] middle of the stacked frames")
        else:
            cards["DATE-OBS"] = (iso_from_mjd(t0), "[UTC] start of the earliest stacked frame")
        cards["DATE-END"] = (iso_from_mjd(t1), "[UTC] end of the latest stacked frame")
        cards["EXPSTART"] = (round(t0, 8), "[MJD UTC] start of the earliest stacked frame")
        cards["EXPEND"] = (round(t1, 8), "[MJD UTC] end of the latest stacked frame")
        # the standard's own MJD twins of DATE-OBS/DATE-END (astropy.wcs derives them, with a
        # warning, when they are missing)
        cards["MJD-OBS"] = (round(0.5 * (t0 + t1) if date_obs == "mid" else t0, 8), "[MJD UTC] DATE-OBS")
        cards["MJD-END"] = (round(t1, 8), "[MJD UTC] DATE-END")
        cards["TIMESYS"] = ("UTC", "time scale of the dates and MJDs")
    return cards


# -- assembling -------------------------------------------------------------------------
def fits_header(cards: Mapping[str, Any], history: Iterable[str] = (), *, wcs: fits.Header | None = None,
                colour: bool = False) -> fits.Header:
    """One :class:`astropy.io.fits.Header`: ``cards`` (keyword → value or (value,
    comment)), then the WCS cards, then HISTORY lines (long lines wrapped).

    ``colour``: the data is an RGB cube (NAXIS3 = 3 planes): CTYPE3 = 'RGB' names the
    planes, and a celestial WCS declares WCSAXES = 3 so that the header stays valid (the
    third axis is then a plain linear one and ``WCS(header).celestial`` is the 2-D sky).
    """
    from astropy.io import fits

    h = fits.Header()
    for key, val in cards.items():
        h[key] = val
    if wcs is not None:
        for card in wcs.cards:
            h.append(card)
    if colour:
        if wcs is not None:
            h["WCSAXES"] = (3, "RA, Dec and the colour planes")
        h["CTYPE3"] = ("RGB", "colour planes R, G, B")
    for line in history:
        for chunk in _chunks(str(line), 70):
            h.add_history(chunk)
    return h


def _chunks(s: str, n: int) -> Iterable[str]:
    for i in range(0, max(len(s), 1), n):
        yield s[i:i + n]


# The cards a TIFF description keeps: what a reader of the file needs to know what it
# holds (TIFF has no place for a WCS that tools read).
TIFF_KEYS = ("OBJECT", "TELESCOP", "INSTRUME", "FILTER", "DATE-OBS", "DATE-END", "EXPTIME", "LIVETIME",
             "STACKCNT", "STACKMTH", "DRIZZLE", "PIXFRAC", "FOCALLEN", "XPIXSZ", "YPIXSZ", "RA", "DEC",
             "SWCREATE")


def tiff_description(header: Mapping[str, Any] | fits.Header) -> str | None:
    """The essentials of a stack's header as ``KEY=value`` lines for a TIFF
    ImageDescription (:data:`TIFF_KEYS` first, then any other non-WCS card)."""
    items = _items(header)
    lines = [f"{k}={_plain(items[k])}" for k in TIFF_KEYS if k in items]
    lines += [f"{k}={_plain(v)}" for k, v in items.items()
              if k not in TIFF_KEYS and not _WCS_KEY.match(k) and k not in ("HISTORY", "COMMENT", "CTYPE3")]
    return "\n".join(lines) or None


def _items(header: Mapping[str, Any] | fits.Header) -> dict[str, Any]:
    if hasattr(header, "cards"):  # an astropy Header
        return {c.keyword: c.value for c in header.cards if c.keyword not in ("HISTORY", "COMMENT", "")}
    return {k: (v[0] if isinstance(v, tuple) else v) for k, v in header.items()}


def _plain(v: Any) -> str:
    return f"{v:.10g}" if isinstance(v, float) else str(v)


# -- the two pipelines ----------------------------------------------------------------------
def deepsky_header(results: Sequence[FrameResult], reference: int, kept: Sequence[int], frames,
                   stack: StackOptions, register: RegisterOptions, *, colour: bool = False) -> fits.Header:
    """The header of a deep-sky stack of the frames ``kept``: the reference frame's
    observation cards and WCS, the time cards, the method cards and a HISTORY line per
    stacked frame."""
    scale = float(stack.drizzle or 1.0)
    meta = _meta(frames, reference)
    frame_header = meta.get("header") or {}
    debayered = colour and frames.pattern(reference) is not None
    wcs = celestial_wcs(frame_header, scale=scale)
    cards: Cards = {"SWCREATE": (f"skystack {__version__}", "software")}
    cards.update(observation_cards(frame_header, debayered=debayered, scale=scale, has_wcs=wcs is not None))
    by_index = {r.index: r for r in results}
    starts = [_start(by_index[i], frames) for i in kept]
    exposures = [by_index[i].metrics.get("exposure_s") for i in kept]
    cards.update(time_cards(starts, exposures, date_obs="start"))
    cards.update({
        "NCOMBINE": (len(kept), "number of frames stacked"),
        "STACKCNT": (len(kept), "number of frames stacked"),
        "STACKMTH": (stack.method, "rejection/stack method"),
        "KAPPALO": (stack.kappa_low, "low rejection parameter"),
        "KAPPAHI": (stack.kappa_high, "high rejection parameter"),
        "NORMALIZ": (stack.norm, "normalisation"),
        "WEIGHTS": (stack.weights, "frame weighting"),
        "INTERP": ("drizzle" if stack.drizzle else stack.interpolation, "resampling onto the output grid"),
        "REGMETH": (register.method, "registration method"),
        "REGMODEL": (register.model, "transform model"),
        "REFFRAME": (reference, "reference frame index (0-based)"),
        "REFNAME": (os.path.basename(frames.name(reference))[:60], "reference frame"),
        "NFRAMES": (len(results), "input frames"),
    })
    if stack.drizzle:
        cards["DRIZZLE"] = (scale, "drizzle scale: output pixels per input pixel")
        cards["PIXFRAC"] = (float(stack.pixfrac), "drizzle drop size, fraction of an input pixel")
    history = [f"skystack stack of {len(kept)} of {len(results)} frames"]
    history += [f"input {i}: {frames.name(i)}" for i in kept]
    return fits_header(cards, history, wcs=wcs, colour=colour)


def _meta(frames, i: int) -> dict[str, Any]:
    try:
        return frames.meta(i)
    except Exception:  # an unreadable header leaves the stack without observation cards
        return {}


def _start(r: FrameResult, frames) -> float | None:
    v = r.metrics.get("start_mjd")
    if v is not None and math.isfinite(v):
        return float(v)
    return frame_start_mjd(_meta(frames, r.index))  # results of a journal from before start_mjd


def lucky_header(opts: LuckyOptions, mode: str, n_used: int, n_frames: int, *,
                 frame_header: Mapping[str, Any] | None = None, starts_mjd: Sequence[float | None] = (),
                 exposures_s: Sequence[float | None] = (), debayered: bool = False) -> tuple[Cards, list[str]]:
    """Cards and HISTORY lines of a lucky-imaging stack.

    With ``frame_header`` (the reference or first frame's header cards, e.g. a FITS
    sequence's) the observation cards are copied; with ``starts_mjd`` (the stacked
    frames' start times, e.g. SER timestamps) DATE-OBS is the *middle* of the stacked
    frames, as planetary users need, with DATE-END, EXPSTART/EXPEND. Pass the result to
    :func:`fits_header` (``colour`` for an RGB stack) for an astropy Header.
    """
    header: Cards = {"SWCREATE": (f"skystack {__version__}", "software")}
    header.update(observation_cards(frame_header, debayered=debayered, scale=float(opts.drizzle or 1.0)))
    if starts_mjd or exposures_s:
        n = max(len(starts_mjd), len(exposures_s))
        header.update(time_cards(list(starts_mjd) or [None] * n, list(exposures_s) or [None] * n,
                                 date_obs="mid"))
    header.update({"NCOMBINE": (n_used, "frames stacked"), "STACKCNT": (n_used, "frames stacked"),
                   "LUCKMODE": (mode, "lucky-imaging alignment"),
                   "KEEP": (str(opts.keep), "--keep rule"),
                   "MULTIPT": (bool(opts.multipoint), "multi-point alignment"),
                   "DRIZZLE": (float(opts.drizzle or 1.0), "drizzle scale")})
    history = [f"skystack lucky: {n_used} of {n_frames} frames, mode {mode}, keep {opts.keep}"]
    return header, history
