"""The training loops, side by side: :mod:`emtdamp.loops.centralised` (epochs of minibatches as one jitted
``lax.scan``, seeds and splits vmapped) and :mod:`emtdamp.loops.federated` (rounds of vmapped clients).
Both drive the pure methods of :mod:`emtdamp.methods`; run folders (:mod:`emtdamp.runs`) drive them."""
