"""jointprune: train a CNN from scratch and prune its channels in the same run."""
__version__ = "0.1.0"
