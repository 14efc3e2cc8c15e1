"""How work runs, whatever it is: the executor (Dask's local threads or a
``dask.distributed`` cluster), progress bars and log lines, and memory (the allocator,
RSS, budgets). Stage code and both pipelines use it; it imports nothing above it.
"""
