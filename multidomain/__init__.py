"""What training, reporting and the servers share: the architecture spec (``arch``), the network
(``network``), parameter/MAC counting (``costs``), preprocessing (``preprocess``), the artifact
format (``artifact``), the served form (``fold``), and torch-free helpers for files (``files``)
and numbers over domains (``stats``).

Imports nothing of this project outside ``multidomain``. ``arch``, ``files`` and ``stats`` import
no torch, so ``reporting`` may use them.
"""
