"""Mixed precision for the training engine: ``precision: fp32 | bf16-mixed | auto`` in a training config.

``bf16-mixed`` runs each forward pass under ``torch.autocast(device_type, dtype=torch.bfloat16)``: matrix
products and convolutions in bfloat16, while the weights, their gradients and the optimizer's state stay float32
(autocast casts copies of the weights, never the weights themselves), so no loss scaling is needed. The engine
computes the losses outside autocast, on the outputs upcast to float32 (:func:`upcast`): the label-distribution
loss's expected age is a matrix product over 101 ages that bfloat16's 8 bits of mantissa would round by up to
half a year.

``auto`` measures (:func:`choose_precision`): a few forward and backward steps of a copy of the model in each
precision on the run's device, after a warm-up, and takes bfloat16 only where it is at least
:data:`MIN_SPEEDUP` times as fast. On a CPU the hardware usually decides it: without AVX512-BF16 or AMX (e.g.
AVX2 only) PyTorch's bfloat16 convolutions take a slow reference path, several times slower than float32; with
AMX they are 2-3 times faster. The reason is given in words for the run log (docs/precision.md).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from agegender.inference.backends import CPU_BF16_FEATURES, cpu_info

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16-mixed", "auto"]
#: What ``precision`` may be in a training config; ``auto`` is resolved to one of the others before training.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "auto")
#: How much faster a bfloat16 step must measure for ``auto`` to take it (its rounding costs a little accuracy).
MIN_SPEEDUP = 1.1
#: On a CPU without native bfloat16, ``auto`` times a slice of this many images of the batch: bfloat16 takes a
#: reference path there that is several times slower at any batch size (0.13x at 16 images, 0.12x at 128 on an
#: AVX2 EPYC), and timing it at a whole batch would take most of a minute. Elsewhere the whole batch is timed:
#: AMX gains little on 16 images (1.03x) and much on 128 (1.8x).
CPU_PROBE_IMAGES = 16


def device_type(device: str | torch.device) -> str:
    """``cuda`` for ``cuda:1``, ``cpu`` for ``cpu``: what ``torch.autocast`` takes."""
    return torch.device(device).type


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: nothing for ``fp32``, bfloat16 autocast on ``device``'s type for
    ``bf16-mixed``. ``auto`` must be resolved first (:func:`choose_precision`).

    >>> with autocast("bf16-mixed", "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    >>> with autocast("fp32", "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device_type(device), dtype=torch.bfloat16)
    raise ValueError(f"precision must be fp32 or bf16-mixed here (auto is resolved first), not {precision!r}")


def upcast(outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A model's outputs as float32, for the losses (a float32 tensor is returned as it is, not copied)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}


def bf16_hardware(device: str | torch.device) -> tuple[bool, str]:
    """Whether ``device`` has native bfloat16 arithmetic, and that in words for the log."""
    if device_type(device) == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes in bf16"
        return False, f"{name} has no native bf16"
    info = cpu_info()
    found = [f for f in CPU_BF16_FEATURES if f in info.features]
    if found:
        names = ", ".join("AMX" if f == "amx_bf16" else "AVX512-BF16" for f in found)
        return True, f"this CPU has {names}"
    return False, "this CPU has no AVX512-BF16 or AMX"


def _step(model: nn.Module, x: Tensor, precision: str) -> None:
    """One forward and backward pass, as training runs it (the optimizer's float32 update left out)."""
    with autocast(precision, x.device):
        outputs = model(x)
    loss = torch.stack([v.sum() for v in upcast(outputs).values() if v.is_floating_point()]).sum()
    model.zero_grad(set_to_none=True)
    loss.backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_seconds(model: nn.Module, x: Tensor, budget_s: float = 0.5, max_steps: int = 20
                         ) -> dict[str, float]:
    """Seconds per forward and backward step on ``x`` in fp32 and in bf16-mixed: the fastest of the steps timed
    after one warm-up step each. The two precisions take turns (so a load that comes and goes on a shared machine
    falls on both), at least one timed step each, until ``budget_s`` has been spent per precision. Runs a copy of
    the model (its weights, gradients and BatchNorm statistics are left alone) with the random number
    generators restored afterwards, so that measuring does not change the run."""
    probe = copy.deepcopy(model).train()
    device = x.device
    precisions = ("fp32", "bf16-mixed")
    times: dict[str, list[float]] = {p: [] for p in precisions}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for precision in precisions:
            _step(probe, x, precision)
            _sync(device)
        while any(not t or (sum(t) < budget_s and len(t) < max_steps) for t in times.values()):
            for precision in precisions:
                if times[precision] and (sum(times[precision]) >= budget_s or len(times[precision]) >= max_steps):
                    continue
                start = time.perf_counter()
                _step(probe, x, precision)
                _sync(device)
                times[precision].append(time.perf_counter() - start)
    return {p: min(t) for p, t in times.items()}


def choose_precision(model: nn.Module, batch_size: int, input_size: int, device: str | torch.device,
                     budget_s: float = 0.5) -> tuple[str, str]:
    """What ``auto`` resolves to for ``model`` at ``batch_size`` images of ``input_size`` pixels square per step
    on ``device``: ``fp32`` or ``bf16-mixed``, and why, in words for the run log. A GPU without native bfloat16
    gets fp32 unmeasured; otherwise the two are timed (:func:`measure_step_seconds`, about a second after the
    warm-up) on a batch of random images (on a CPU without native bfloat16, a slice of :data:`CPU_PROBE_IMAGES`
    of it)."""
    native, hardware = bf16_hardware(device)
    if device_type(device) == "cuda" and not native:
        return "fp32", f"auto: {hardware}"
    n = batch_size if native else min(batch_size, CPU_PROBE_IMAGES)
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(n, 3, input_size, input_size).to(device).contiguous(memory_format=torch.channels_last)
    seconds = measure_step_seconds(model, x, budget_s)
    speedup = seconds["fp32"] / seconds["bf16-mixed"]
    chosen = "bf16-mixed" if speedup >= MIN_SPEEDUP else "fp32"
    log.debug("precision auto: %s", ", ".join(f"{p} {s * 1000:.0f} ms per step of {n}" for p, s in seconds.items()))
    return chosen, f"auto: bf16 measured {speedup:.3f}x as fast here (it must be {MIN_SPEEDUP:g}x; " \
                   f"{1000 * seconds['fp32']:.0f} vs {1000 * seconds['bf16-mixed']:.0f} ms per step of {n} images): " \
                   f"{hardware}"


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse ``bf16-mixed`` on a GPU that has no bfloat16 at all, in words rather than a CUDA error."""
    if precision == "bf16-mixed" and device_type(device) == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision: bf16-mixed, but {torch.cuda.get_device_name(torch.device(device))} has no "
                         "bf16: use fp32 or auto")
