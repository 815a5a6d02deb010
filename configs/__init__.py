"""Hydra configs shipped inside the package so `mamba-seq` works from any directory.

One group per constructor (model/, data/, task/, trainer/, callbacks/, logger/, paths/);
experiment/ files compose them. `config.yaml` is the root.
"""
