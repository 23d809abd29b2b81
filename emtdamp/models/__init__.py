"""The networks methods train: the plain MLP (:mod:`emtdamp.models.mlp`), the small CNN
(:mod:`emtdamp.models.cnn`), the user's own flax module (:mod:`emtdamp.models.flax_adapter`), the builder every
gradient-based method calls (:func:`emtdamp.models.network.build_network`) and :class:`ModelSpec`.

Only :class:`ModelSpec` is imported here (the method contract in :mod:`emtdamp.methods.base` needs it); import the
submodules for the rest.
"""

from emtdamp.models.spec import ModelSpec

__all__ = ["ModelSpec"]
