"""Tooling for tests and benchmarks, never shipped in an image or archive: a local TorchServe
run and stopped by process group (``torchserve_local.py``), LitServe serving an artifact as a
benchmark peer (``litserve_peer.py``) and an open- and closed-loop HTTP load client
(``http_load.py``).

Imports: ``multidomain``, psutil, litserve (with its FastAPI) and the standard library; never
``service``, ``training``, ``torchserving`` or ``reporting``.
"""
