"""Read CIFAR's python-pickle batches without letting the file run code.

`pickle.load` calls whatever callable a file names, so a batch file planted in a data folder
could run any command. CIFAR batches only hold dicts, lists, strings, bytes, ints and numpy
arrays, so an Unpickler that resolves just the few globals numpy's array pickling needs is
enough; any other global is refused before anything named by the file is called.
"""
from __future__ import annotations

import importlib
import io
import pickle


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 2 pickles of bytes arrive as `_codecs.encode(str, "latin1")`; only that is allowed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


# What numpy's array pickling names (numpy 2 moved numpy.core to numpy._core; files name either):
# _reconstruct/ndarray/dtype/scalar for protocols <= 4, _frombuffer for protocol 5.
_NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
          ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype")}


def _numpy_global(module: str, name: str):
    try:
        return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
    except (ImportError, AttributeError):  # numpy 1.x
        return getattr(importlib.import_module(module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module.replace("numpy._core", "numpy.core"), name) in _NUMPY:
            return _numpy_global(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}: a data batch holds only arrays and lists")


def safe_load(file: io.BufferedIOBase, encoding: str = "latin1"):
    """Unpickle a data file allowing only plain containers and numpy arrays."""
    return _RestrictedUnpickler(file, encoding=encoding).load()
