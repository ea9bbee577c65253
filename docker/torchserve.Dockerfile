# syntax=docker/dockerfile:1
# TorchServe 0.12 (CPU) with what the handler needs beyond the stock image. The .mar ships the
# handler (torchserving/handler.py) and a copy of the `multidomain` package; this image adds
# safetensors (artifact loading).
#
#   docker build -f docker/torchserve.Dockerfile -t multidomain-pruning/torchserve:0.1.0 .
FROM pytorch/torchserve:0.12.0-cpu

USER root
RUN pip install --no-cache-dir "safetensors==0.4.5" "pillow>=10"
USER model-server

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"
