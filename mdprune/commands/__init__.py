"""The ``mdprune`` commands, one module per concern, registered on the one app in
``mdprune.cli``: ``common`` (shared options, ``clean_errors``, runtime and data loading),
``train`` (``data``, ``pretrain``, ``train``), ``profile``, ``pipeline``, ``artifacts``
(``verify``, ``predict-decathlon``, ``torchserve-export``), ``report`` and ``serve``. Like the
rest of ``mdprune`` they import ``training``, ``reporting``, the servers and torch only inside
the command that needs them.
"""
