"""The divergence guard of the shared training loop.

A run diverges when its training loss (every epoch), or its test metric (at evaluated epochs: RMSE
for regression, NLL for classification), grows by more than ``factor`` over the best value seen so
far, or becomes NaN/inf. What happens then is ``mode``:

- ``"stop"`` (default): the loop raises :class:`DivergenceError` *before* the diverged state reaches
  the checkpoint callback, so the run folder keeps the checkpoint of the last good epoch;
- ``"warn"``: one line on stderr the first time, and training goes on;
- ``"ignore"``: nothing.

"Grows by more than ``factor``" means ``value > factor · best`` for a positive best. A loss that can
be zero or negative (e.g. a negative log density per row) has no such ratio; there the scale is the
first epoch's value: ``value > best + (factor − 1)·|first|``.
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("stop", "warn", "ignore")


class DivergenceError(RuntimeError):
    """A run's loss or test metric grew past the guard's factor (its message is one line)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


@dataclasses.dataclass(frozen=True)
class DivergenceGuard:
    """Static settings: ``mode`` in :data:`MODES`, ``factor`` > 1 (growth over the best value)."""

    mode: str = "stop"
    factor: float = 1e3

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"on_divergence must be one of {MODES}, got {self.mode!r}")
        if not self.factor > 1.0:
            raise ValueError(f"divergence factor must be > 1, got {self.factor!r}")


def grew_past(value: float, best: float, factor: float, first: float | None = None) -> bool:
    """Whether ``value`` exceeds ``best`` by more than ``factor`` (see the module docstring; ``first``
    is the first value seen, the scale used when ``best <= 0``)."""
    scale = best if best > 0 else abs(first if first is not None else best)
    return value > best + (factor - 1.0) * scale


@dataclasses.dataclass
class DivergenceMonitor:
    """Tracks the best training loss and test metric of one run; :meth:`update` says when it diverged.

    ``name`` (method, and the run within a vmapped group) is used in the message.
    """

    guard: DivergenceGuard
    name: str
    best_loss: float = math.inf
    best_loss_epoch: int = 0
    first_loss: float | None = None
    best_metric: float = math.inf
    best_metric_epoch: int = 0
    first_metric: float | None = None
    warned: bool = False
    diverged_at: int | None = None

    def update(self, epoch: int, loss: float) -> str | None:
        """Record epoch ``epoch``'s training loss; a one-line message if the run diverged here, else None."""
        if self.guard.mode == "ignore":
            return None
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        msg = self._check("train loss", loss, self.best_loss, self.best_loss_epoch, self.first_loss, epoch)
        if msg is None and loss < self.best_loss:
            self.best_loss, self.best_loss_epoch = loss, epoch
        return self._seen(msg, epoch)

    def update_metric(self, epoch: int, name: str, value: float) -> str | None:
        """Record an evaluated epoch's test metric ``name`` (lower is better, e.g. RMSE or NLL)."""
        if self.guard.mode == "ignore":
            return None
        if self.first_metric is None and math.isfinite(value):
            self.first_metric = value
        msg = self._check(f"test {name}", value, self.best_metric, self.best_metric_epoch, self.first_metric, epoch)
        if msg is None and value < self.best_metric:
            self.best_metric, self.best_metric_epoch = value, epoch
        return self._seen(msg, epoch)

    def _seen(self, msg: str | None, epoch: int) -> str | None:
        if msg is not None and self.diverged_at is None:
            self.diverged_at = epoch
        return msg

    def _check(self, what: str, value: float, best: float, best_epoch: int, first: float | None,
               epoch: int) -> str | None:
        if not math.isfinite(value):
            return f"{self.name} diverged at epoch {epoch}: {what} is {value}"
        if math.isfinite(best) and grew_past(value, best, self.guard.factor, first):
            growth = value / best if best > 0 else math.inf
            ratio = f"{growth:.3g} x its best" if math.isfinite(growth) else "far above its best"
            return (f"{self.name} diverged at epoch {epoch}: {what} {value:.4g} is {ratio} {best:.4g} "
                    f"(epoch {best_epoch}; limit train.divergence_factor={self.guard.factor:g})")
        return None
