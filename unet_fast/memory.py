"""Measuring what autograd keeps for backward: the model's activation memory in training."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the unique storages autograd saves for backward while running ``fn()``.

    Measured with ``torch.autograd.graph.saved_tensors_hooks``: every tensor packed for backward is
    counted once per storage (tensors saved by several ops, or views of one another, share one), and
    storages of the tensors in ``exclude`` (typically the model's parameters) are not counted. Works
    with meta tensors too, so a model's footprint at full size can be measured without computing it.
    The output of ``fn`` is kept alive until the count is taken, so no storage is freed and reused.
    """
    excluded = {t.untyped_storage()._cdata for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in excluded:
            storages[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn()
    total = sum(storages.values())
    del output
    return total
