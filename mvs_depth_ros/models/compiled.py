"""``torch.compile`` behind an estimator option, with a clean fallback to eager execution.

The learned estimators route their network calls through :class:`CompiledCall`. With compilation enabled, the
first call compiles (TorchInductor: on CPU it generates C++ kernels that fuse the elementwise work, the warping
and the correlations around the convolutions; the compiled code is cached on disk by torch, so a later process
starts faster) and reports how long that took; if compilation fails for any reason the call runs eagerly, says
why once, and stays eager. Results equal the eager ones within floating-point reassociation (~1e-6 relative),
which the conformance tests' tolerances cover (``test/test_compiled.py``).

The option (``compile`` on every learned estimator): ``True`` compiles, ``False`` and ``"auto"`` (the default) run
eagerly -- ``"auto"`` is kept so that a model measured to pay off from its first minutes could opt in
(``pays_on_cpu``); none does today. ``MVS_DEPTH_COMPILE=0`` turns ``"auto"`` off everywhere.

Why opt-in: the price is the first call. On a 2-vCPU machine it took 50-106 s (IterMVS, PatchmatchNet) when quiet
and 4-8 minutes under heavy load (2026-12-07/08), and torch's on-disk caches did not shorten it much in a second
process. IterMVS then saves ~40 ms per keyframe over its (since faster) eager code there (README): worth it in a node
that runs for hours (``--model-option compile=true``, the node's ``model_options``), a loss in a short
``mvs-depth run``, and the node's first depth map would arrive minutes late; PatchmatchNet compiled is no faster
than its eager code now. Compiled outputs also differ from eager ones by float reassociation (a few near-tie pixels
by > 1 mm), so the node and ``mvs-depth run`` must agree on it for eval-bag to equal offline: both default to eager.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)


def resolve_compile(option: Any, device: torch.device, pays_on_cpu: bool = True) -> bool:
    """The ``compile`` estimator option -> compile or not. ``"auto"``: on CPU where ``pays_on_cpu`` (no model
    today), unless ``MVS_DEPTH_COMPILE`` is ``0``/``false``/``off``."""
    if isinstance(option, str):
        value = option.strip().lower()
        if value in ("1", "true", "on", "yes"):
            return True
        if value in ("0", "false", "off", "no"):
            return False
        if value != "auto":
            raise ValueError(f"compile must be auto, true or false, got {option!r}")
        if os.environ.get("MVS_DEPTH_COMPILE", "").strip().lower() in ("0", "false", "off", "no"):
            return False
        return pays_on_cpu and device.type == "cpu"
    return bool(option)


class CompiledCall:
    """``fn`` compiled with ``torch.compile`` on first use (``enabled``), else ``fn`` itself.

    ``compile_s`` holds the first compiled call's duration (compilation included) once it has run;
    ``fallback`` the reason compilation was abandoned, if it was.
    """

    def __init__(self, fn: Callable[..., Any], name: str, enabled: bool, **compile_kwargs: Any):
        self.fn = fn
        self.name = name
        self.enabled = bool(enabled)
        self.compile_s: Optional[float] = None
        self.fallback: Optional[str] = None
        self._compiled: Optional[Callable[..., Any]] = None
        self._kwargs = dict(dynamic=False, **compile_kwargs)

    @property
    def active(self) -> bool:
        return self.enabled and self.fallback is None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self.fn(*args, **kwargs)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, **self._kwargs)
            if self.compile_s is None:
                t0 = time.perf_counter()
                out = self._compiled(*args, **kwargs)
                self.compile_s = time.perf_counter() - t0
                log.info("torch.compile of %s: first call %.1f s (compilation included)", self.name, self.compile_s)
                return out
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the eager code
            out = self.fn(*args, **kwargs)    # an error of the inputs themselves is raised here, compile stays on
            self.fallback = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("torch.compile of %s failed (%s): running it eagerly from now on", self.name, self.fallback)
            return out

    def describe(self) -> str:
        if not self.enabled:
            return "eager"
        if self.fallback:
            return f"eager (compile failed: {self.fallback})"
        return "compiled" if self.compile_s is None else f"compiled (first call {self.compile_s:.1f} s)"
