"""Tooling for tests and benchmarks, never shipped in an image or archive: a local TorchServe
run and stopped by process group (``torchserve_local.py``) and an open- and closed-loop HTTP
load client (``http_load.py``).

Imports: ``multidomain``, psutil and the standard library; never ``service``, ``training``,
``torchserving`` or ``reporting``.
"""
