"""Artifact I/O: Zarr stores and JSON written atomically with provenance, checkpoints and their
sidecars, image files and grids, the faces dataset, stores written chunk by chunk in shards.

May import: models (architectures to rebuild from checkpoints) and the standard/third-party
libraries; never support/, stages/, pipeline/ or tools/.
"""
