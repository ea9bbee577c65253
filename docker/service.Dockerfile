# The online inference service (FastAPI + uvicorn), CPU-only torch.
#
#   docker build -f docker/service.Dockerfile -t multidomain-pruning/service:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 127.0.0.1:8000:8000 \
#       -v "$PWD/model_store:/models:ro" multidomain-pruning/service:0.1.0
#
# The model store is not part of the image: mount it read-only at /models. Every service setting
# is an MDP_* environment variable (docs/operations.md).
#
# Build arguments (the defaults need Docker Hub and the PyTorch CPU index):
#   BASE_IMAGE           Debian bookworm with python3.11 and its venv module. Where no registry is
#                        reachable, docker/bootstrap_base.sh builds one from Debian packages.
#   TORCH_INDEX_URL      package index torch (and torchvision) come from
#   TORCH_VERSION        torch release, e.g. 2.14.1 (or a local build such as 2.13.0+cpu)
#   TORCHVISION_VERSION  torchvision release to add (the code does not need it); default: none
# Extra CA certificates pip needs during the build (a TLS-inspecting proxy): put them in
# docker/build-ca/*.crt. Only the build stage sees them; the final image does not contain them.
ARG BASE_IMAGE=python:3.11.10-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Build stage: a virtualenv with the dependencies, and the project as a wheel.
FROM ${BASE_IMAGE} AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=

ENV PATH=/opt/venv/bin:$PATH \
    PIP_CERT=/etc/pip-ca.pem \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY docker/build-ca/ /tmp/build-ca/
RUN cat /etc/ssl/certs/ca-certificates.crt $(find /tmp/build-ca -name '*.crt') > /etc/pip-ca.pem \
    && python3 -m venv /opt/venv

# 1. torch (and torchvision, if asked for) builds from TORCH_INDEX_URL without their dependencies, then the
#    dependencies from PyPI: the installed builds satisfy the pins, so pip keeps them. torch's
#    C++ tests and headers (for compiling extensions) are not needed: about 190 MB.
RUN set -eu; \
    builds="torch==${TORCH_VERSION}${TORCHVISION_VERSION:+ torchvision==${TORCHVISION_VERSION}}"; \
    pip install --no-deps --index-url "${TORCH_INDEX_URL}" $builds; \
    pip install $builds; \
    for torch in /opt/venv/lib/python3*/site-packages/torch; do \
        rm -rf "$torch/test" "$torch/include"; \
        find "$torch/bin" -type f ! -name torch_shm_manager -delete; \
    done; \
    python -c "import torch; print('torch', torch.__version__, torch.zeros(2).sum().item())"

# 2. The other requirements, read from pyproject.toml: editing code keeps this layer.
COPY pyproject.toml /src/
COPY docker/requirements.py /tmp/
RUN python /tmp/requirements.py /src/pyproject.toml service > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# 3. The code, as a wheel: only what serving needs (the service never imports `training`,
#    `reporting`, `torchserving` or the test tooling in `devtools`).
COPY README.md /src/
COPY multidomain /src/multidomain
COPY service /src/service
COPY mdprune /src/mdprune
RUN pip wheel --no-deps --wheel-dir /dist /src

# ---------------------------------------------------------------------------------------------
# Final stage: the base image, the virtualenv, the project wheel and an unprivileged user.
FROM ${BASE_IMAGE}

# PYTHONSAFEPATH: the working directory is not put on sys.path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/venv /opt/venv
COPY --from=build /dist/ /tmp/dist/
# The import check fails the build when a package the service needs was not copied above.
RUN pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && python -c "import multidomain.artifact, service.app, service.server, mdprune.cli" \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir -p /models

# The code stays root-owned and read-only to the service user.
USER 10001:10001

ENV MDP_MODEL_STORE=/models \
    MDP_MODEL_NAME=default \
    MDP_HOST=0.0.0.0 \
    MDP_PORT=8000

EXPOSE 8000

# Healthy = ready: /readyz answers 200 once the artifact is loaded and every domain warmed up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MDP_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: python is PID 1 and gets SIGTERM directly (readiness 503, drain, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
