"""Online inference over HTTP: a FastAPI service over an exported multi-domain artifact
(``create_app`` in ``service.app``), run by uvicorn (``python -m service``).

Imports: ``multidomain`` (its serving core is shared with the TorchServe handler), FastAPI,
Starlette, pydantic, uvicorn and prometheus-client. Never the offline ``training`` or
``reporting`` packages, ``torchserving``, or the test tooling in ``devtools``.
"""
