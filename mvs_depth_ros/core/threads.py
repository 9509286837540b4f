"""Torch intra-op threads for code made of many small ops."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import torch

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def one_intra_op_thread(device: torch.device = torch.device("cpu")) -> Iterator[None]:
    """Run the block with one torch intra-op thread on CPU (restored after; process-wide, like every torch thread
    setting: meant for the one thread of a process that runs torch, as in the nodes and the CLI).

    For code made of many small ops (tens of thousands of elements each): splitting each op across threads costs a
    synchronisation per op, which is the larger part of their time with 2 threads, and much more on a loaded
    machine (the temporal fusion after the plane sweep on a 2-vCPU AMD EPYC with the test suite running beside it,
    2026-12-08: 25 ms per keyframe with 1 thread, 144 ms with 2)."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def single_threaded(fn: F) -> F:
    """``fn`` run under :func:`one_intra_op_thread` (CPU)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_intra_op_thread():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
