"""TorchServe support: the custom handler shipped inside the ``.mar`` (``handler.py``) and the
export that packages an artifact into one (``export.py``).

Imports: ``multidomain``, torch and the standard library; ``export.py`` also runs
torch-model-archiver. Never ``service``, ``training``, ``reporting`` or a web framework
(FastAPI, Starlette, pydantic): the archive holds only the handler and a copy of
``multidomain``, and runs in TorchServe's Python.
"""
