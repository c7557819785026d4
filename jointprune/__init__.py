"""jointprune: train a CNN from scratch and prune its channels in the same run.

`load_pruned(path)` / `load_pruned(path, into=net)` open an export folder; `load_report(path)`
gives its pruned.json. See `help(jointprune.load_pruned)`.
"""
from .pruning.export import ExportError, load_pruned, load_report

__version__ = "0.1.0"
__all__ = ["ExportError", "load_pruned", "load_report", "__version__"]
