"""Integer codes shared by the CPU kernels, their GPU twins and the Python layer.

Kernels take plain integers (Numba cannot dispatch on strings); the Python layer maps
option names to codes through these dictionaries and nothing else.
"""

REJECT_NONE = 0
REJECT_SIGMA = 1
REJECT_WINSORIZED = 2
REJECT_MAD = 3
REJECT_LINEAR_FIT = 4
REJECT_PERCENTILE = 5
REJECT_GESD = 6
REJECT_MINMAX = 7

REJECT = {
    "none": REJECT_NONE,
    "sigma": REJECT_SIGMA,
    "winsorized": REJECT_WINSORIZED,
    "mad": REJECT_MAD,
    "linear-fit": REJECT_LINEAR_FIT,
    "percentile": REJECT_PERCENTILE,
    "gesd": REJECT_GESD,
    "minmax": REJECT_MINMAX,
}

REDUCE_MEAN = 0
REDUCE_MEDIAN = 1

REDUCE = {"mean": REDUCE_MEAN, "median": REDUCE_MEDIAN}

INTERP_BILINEAR = 0
INTERP_LANCZOS4 = 1
INTERP_CUBIC = 2

# "lanczos" is the option name (StackOptions.interpolation); "lanczos4" is OpenCV's.
INTERPOLATION = {"bilinear": INTERP_BILINEAR, "lanczos": INTERP_LANCZOS4, "lanczos4": INTERP_LANCZOS4,
                 "cubic": INTERP_CUBIC, "bicubic": INTERP_CUBIC}
