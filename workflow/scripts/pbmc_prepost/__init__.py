"""Paired pre/post-treatment PBMC single-cell analysis: the logic behind the Snakemake rules.

Each module holds plain, importable, unit-tested functions; the scripts next to this package are
thin adapters from the ``snakemake`` object to these functions.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input (sample sheet, count file, config): the message names file, row and fix."""
