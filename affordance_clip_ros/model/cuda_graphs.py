"""The torch image path recorded once as a CUDA graph and replayed: letterboxing gives the model
one input shape, so no compiler (Triton, C++) is needed and recording takes well under a second."""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Callable

import torch

log = logging.getLogger(__name__)
Embedder = Callable[[torch.Tensor], torch.Tensor]


def capture(fn: Embedder, pixels: torch.Tensor, autocast: Callable[[], AbstractContextManager],
            pool=None, warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Record ``fn(pixels)`` into a CUDA graph, after ``warmup`` eager runs on a side stream (cuDNN
    picks its kernels, the allocator settles). Returns the graph and its output tensor; replaying
    the graph reads ``pixels`` and overwrites that output."""
    stream = torch.cuda.Stream(pixels.device)
    stream.wait_stream(torch.cuda.current_stream(pixels.device))
    with torch.cuda.stream(stream), autocast():
        for _ in range(warmup):
            fn(pixels)
    torch.cuda.current_stream(pixels.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), autocast():
        out = fn(pixels)
    return graph, out


class GraphedImagePath:
    """``fn`` (pixels (B, 3, S, S) -> embeddings) replayed from one CUDA graph per batch size,
    recorded on the first batch of that size. Inputs are copied into the graph's own input buffer
    and outputs cloned before they are returned, so a result outlives the next replay. If a
    recording fails, one warning, and ``fn`` runs eagerly from then on.

    ``autocast`` gives the image path's autocast context; it must not cache casts (a cached cast
    would be recorded as a tensor the graph does not own)."""

    def __init__(self, fn: Embedder, autocast: Callable[[], AbstractContextManager]):
        self.fn = fn
        self.autocast = autocast
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.failed = False
        self.pool = None

    @torch.inference_mode()
    def record(self, pixels: torch.Tensor) -> bool:
        """Record the graph for ``pixels``' shape now (start-up); False if it failed (eager from then on)."""
        key = (tuple(pixels.shape), pixels.device)
        if self.failed or key in self.graphs:
            return not self.failed
        static = torch.zeros_like(pixels)
        try:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every batch size
            graph, out = capture(self.fn, static, self.autocast, self.pool)
        except Exception as e:  # whatever the driver or an op raises: eager is always correct
            self.failed = True
            reason = (str(e).strip().splitlines() or [""])[0]
            log.warning("CUDA graph capture of the image path failed (%s: %s): running it eagerly, about 2x "
                        "slower at batch 1. Set compile to 'off' to silence this.", type(e).__name__, reason)
            return False
        self.graphs[key] = (graph, static, out)
        return True

    @torch.inference_mode()  # the graph's buffers are inference tensors
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.record(pixels):
            return self.fn(pixels)
        graph, static, out = self.graphs[(tuple(pixels.shape), pixels.device)]
        static.copy_(pixels)
        graph.replay()
        return out.clone()
