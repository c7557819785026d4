"""jointprune: train a CNN from scratch and prune its channels in the same run."""
from .pruning.export import load_pruned

__version__ = "0.1.0"
__all__ = ["load_pruned", "__version__"]
