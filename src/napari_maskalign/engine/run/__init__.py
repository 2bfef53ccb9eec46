"""Running a registration: options, the per-frame registrar, the stack run
(threads, GPU batches, dask), static outliers and masks, outlier flags, the
result, and the scikit-image drop-in.

The top layer: imports models, kernels and backends, never the other way.
"""
