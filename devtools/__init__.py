"""Tooling for tests and benchmarks, never shipped in an image or archive: a local TorchServe
run and stopped by process group (``torchserve_local.py``).

Imports: ``multidomain``, psutil and the standard library; never ``service``, ``training``,
``torchserving`` or ``reporting``.
"""
