# syntax=docker/dockerfile:1
# The online inference service (FastAPI + uvicorn), CPU-only torch.
#
#   docker build -f docker/service.Dockerfile -t multidomain-pruning/service:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/model_store:/models:ro" \
#       multidomain-pruning/service:0.1.0
#
# The model store is not part of the image: mount it read-only at /models. Every service setting
# is an MDP_* environment variable (docs/operations.md).
FROM python:3.11.10-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. Dependencies (changes rarely): CPU-only torch from the PyTorch index, then the core and
#    `service` requirements read from pyproject.toml, so that editing code keeps this layer.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. Code: only what serving needs (the service never imports `training`, `torchserving` or the
#    test tooling in `devtools`).
COPY README.md ./
COPY multidomain ./multidomain
COPY service ./service
COPY mdprune ./mdprune
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# 3. Unprivileged runtime user; the code stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
    && mkdir -p /models && chown app:app /models
USER 10001:10001

ENV MDP_MODEL_STORE=/models \
    MDP_MODEL_NAME=default \
    MDP_HOST=0.0.0.0 \
    MDP_PORT=8000

EXPOSE 8000

# Healthy = ready: /readyz answers 200 once the artifact is loaded and every domain warmed up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MDP_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: uvicorn is PID 1 and gets SIGTERM directly (readiness 503, drain, exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
