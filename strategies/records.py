"""The global state as one ArrayRecord of prefixed keys ('generator.*', 'msa.*'): the arrays of a
component, the payload of a stage, and merging updated components back into the state."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from hydiscgan_fl.config import AFFECT_STAGE, SERVER_STAGE

# What each stage sends to the clients (the server's own stage sends nothing).
STAGE_COMPONENTS = {"align": ("generator",), "msa": ("generator", "msa"), "multimodal": ("msa",),
                    "distill": ("msa",), "multitask": ("msa",), SERVER_STAGE: (), AFFECT_STAGE: ("msa",)}


def component_arrays(arrays: ArrayRecord, component: str) -> ArrayRecord:
    prefix = component + "."
    return ArrayRecord({key: arrays[key] for key in arrays if key.startswith(prefix)})


def merge_arrays(base: ArrayRecord, updates: Iterable[ArrayRecord]) -> ArrayRecord:
    """`base` with the keys of each update replaced by the update's arrays (later updates win)."""
    merged = ArrayRecord({key: base[key] for key in base})
    for update in updates:
        for key in update:
            merged[key] = update[key]
    return merged


def components_payload(arrays: ArrayRecord, components: Iterable[str]) -> ArrayRecord:
    """The arrays of `components` only: what a stage sends, and what its replies must hold."""
    return merge_arrays(ArrayRecord(), (component_arrays(arrays, c) for c in components))


TRANSPORT_DTYPES = {"float32": np.float32, "float16": np.float16}


def to_transport(arrays: ArrayRecord, dtype: str) -> ArrayRecord:
    """`arrays` as they travel: floating arrays in `dtype` (half precision halves the bytes both ways);
    other arrays (integer counters) unchanged. float32 returns `arrays` itself."""
    if dtype == "float32":
        return arrays
    target = TRANSPORT_DTYPES[dtype]
    return ArrayRecord({key: Array(value.numpy().astype(target)) if _is_float(value) else value
                        for key, value in arrays.items()})


def from_transport(arrays: ArrayRecord, like: ArrayRecord) -> ArrayRecord:
    """Arrays that travelled in a transport dtype, back in the dtype of the global arrays `like` (float32),
    for aggregation and training: sums in half precision would lose the small updates."""
    return ArrayRecord({key: Array(value.numpy().astype(like[key].dtype)) if value.dtype != like[key].dtype else value
                        for key, value in arrays.items()})


def _is_float(array: Array) -> bool:
    return np.issubdtype(np.dtype(array.dtype), np.floating)
