"""Online inference: a FastAPI service over an exported multi-domain artifact (``service.app``),
run by uvicorn (``python -m service``). Never imports the offline ``training`` package."""
