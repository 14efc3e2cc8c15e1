"""Hot loops only: Numba CPU kernels (``cpu/``) and their numba.cuda twins (``gpu/``).

Plain arrays in, plain arrays out. Nothing here imports skystack, Dask, astropy or any
I/O library (a test enforces it), so the kernels can be read, tested and benchmarked alone.
"""
