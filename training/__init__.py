"""Offline training: data (``training.data``), backbone pre-training (``pretrain``), budget-aware
training (``budget``, its configuration and costs in ``budget_config``) through the one step loop
(``loop``), sharing losses (``sharing``), projection and pruning (``prune``), checkpoints
(``checkpoint``), the compact training history (``history``), the evaluation protocols
(``protocol``), export of the artifact (``export``) and the package's errors (``errors``).

May import ``multidomain`` (and torch); never ``service``, ``reporting`` or ``mdprune``. Kept
empty: each module is imported where it is used.
"""
