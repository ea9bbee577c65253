"""Restricted unpickling of numpy arrays (animal_mnist ships pickled arrays)."""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "restricted_pickle_load"]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only numpy's array reconstructor, ndarray and dtype.

    That covers arrays pickled with protocols 3 and 4 (animal_mnist uses 4); anything else,
    including protocol 2 (``_codecs.encode``) and 5 (``_frombuffer``) arrays, is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # pragma: no cover - numpy 1.x
                multiarray = importlib.import_module("numpy.core.multiarray")
            return multiarray._reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"forbidden global in pickle: {module}.{name}")


def restricted_pickle_load(data: bytes) -> np.ndarray:
    """Unpickle bytes that must contain exactly one numpy array."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array, got {type(obj).__name__}")
    return obj
