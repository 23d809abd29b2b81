"""What network a run trains: :class:`ModelSpec` (the ``model:`` block of a config, as methods see it)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emtdamp.methods.base import DataSpec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The network: an MLP (``kind="mlp"``) or a small CNN (``kind="cnn"``), output layer linear.

    ``hidden`` are the dense hidden widths and ``activation`` the hidden activation of both kinds.
    A CNN (see :mod:`emtdamp.models.cnn`) first reshapes the flattened inputs to ``DataSpec.image_shape``
    and applies one ``kernel_size x kernel_size`` conv ("SAME" padding) per entry of ``conv``
    (its output channels), each followed by the activation and a 2x2 max-pool; then the ``hidden``
    dense layers and the output layer. ``conv`` and ``kernel_size`` are ignored by an MLP.
    ``kind="flax"``: the user's flax.linen / flax.nnx Module ``module`` (a class, a linen instance, or an
    import path ``"package.module:ClassName"``) built with the constructor arguments ``kwargs`` (``(name,
    value)`` pairs), see :mod:`emtdamp.models.flax_adapter`; ``hidden`` / ``activation`` / ``conv`` are then unused.
    """

    hidden: tuple[int, ...] = (64,)
    activation: str = "relu"
    kind: str = "mlp"
    conv: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    module: Any = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    def layer_sizes(self, data: DataSpec) -> tuple[int, ...]:
        """``(d_in, *hidden, d_out)`` for the given data."""
        return (data.n_features, *self.hidden, data.n_outputs)
