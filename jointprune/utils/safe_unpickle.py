"""Read CIFAR's python-pickle batches without letting the file run code.

`pickle.load` calls whatever callable a file names, so a batch file planted in a data folder
could run any command. CIFAR batches only hold dicts, lists, strings, bytes, ints and numpy
arrays, so an Unpickler that resolves just the few globals numpy's array pickling needs is
enough; any other global is refused (and nothing named by the file is ever called).
"""
from __future__ import annotations

import io
import pickle

import numpy as np

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# numpy moved its pickling helpers from numpy.core to numpy._core in 2.0; files name either.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    # protocol 5 rebuilds arrays from a raw buffer (numpy's _frombuffer: bytes, dtype, shape)
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_frombuffer(),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_frombuffer(),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_scalar(),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_scalar(),
    ("_codecs", "encode"): lambda: _latin1_encode,
}


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    return scalar


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 2 pickles of bytes arrive as `_codecs.encode(str, "latin1")`; only that is allowed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        factory = _SAFE_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a data batch holds only arrays and lists")
        return factory()


def safe_load(file: io.BufferedIOBase, encoding: str = "latin1"):
    """Unpickle a data file allowing only plain containers and numpy arrays."""
    return _RestrictedUnpickler(file, encoding=encoding).load()
