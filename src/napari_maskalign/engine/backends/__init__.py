"""Where arrays live and come from: the ``device`` option (numpy, CuPy, the
stack's own array-API namespace), reading frames from any stack (dask in
groups of chunks), and the allocator setting for the frame loop.

Imports nothing from the rest of the engine.
"""
