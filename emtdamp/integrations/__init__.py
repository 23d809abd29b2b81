"""Integrations with churn-prone third-party frameworks, one module each (an upstream API change touches one
file): :mod:`emtdamp.integrations.flower` (real federated clients with Flower, ``pip install 'emtdamp[flower]'``)."""
