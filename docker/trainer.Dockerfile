# One-shot trainer: builds the embedded benchmark, pre-trains the backbone, trains under the
# budget, prunes and exports the artifact to /models/default/<version>/, then exits.
#
#   docker build -f docker/trainer.Dockerfile -t multidomain-pruning/trainer:0.1.0 .
#   docker run --rm -v "$PWD/model_store:/models" multidomain-pruning/trainer:0.1.0 --budget 0.3
#
# Arguments after the image name are appended to the pipeline command (see
# `mdprune pipeline --help`); a repeated option overrides the default given here. `--if-missing`
# trains only when the store holds no complete version of the model yet.
# /work holds the data cache (/work/data_cache) and the backbone run (/work/runs): mount volumes
# there to keep them between runs. Artifacts are written readable per the umask (022: other
# users, such as a service running under another uid, can read them).
#
# Build arguments: the same as docker/service.Dockerfile (BASE_IMAGE, TORCH_INDEX_URL,
# TORCH_VERSION, TORCHVISION_VERSION; extra CA certificates in docker/build-ca/*.crt).
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
#    C++ tests and headers (for compiling extensions) are not needed: about 190 MB. Everything
#    up to here is the same as in docker/service.Dockerfile, so the two builds share these layers.
RUN set -eu; \
    builds="torch==${TORCH_VERSION}${TORCHVISION_VERSION:+ torchvision==${TORCHVISION_VERSION}}"; \
    pip install --no-deps --index-url "${TORCH_INDEX_URL}" $builds; \
    pip install $builds; \
    for torch in /opt/venv/lib/python3*/site-packages/torch; do \
        rm -rf "$torch/test" "$torch/include"; \
        find "$torch/bin" -type f ! -name torch_shm_manager -delete; \
    done; \
    python -c "import torch; print('torch', torch.__version__, torch.zeros(2).sum().item())"

# 2. The other requirements, read from pyproject.toml: the `training` extra, and from the
#    `torchserve` extra what `mdprune torchserve-export` needs. animal_mnist declares tensorflow
#    but only its data files are read: installed without dependencies.
ARG ANIMAL_MNIST_VERSION=0.4
COPY pyproject.toml /src/
COPY docker/requirements.py /tmp/
RUN python /tmp/requirements.py /src/pyproject.toml training \
        torchserve:torch-model-archiver,pyyaml > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps "animal-mnist==${ANIMAL_MNIST_VERSION}"

# 3. The code, as a wheel: training, reports, the TorchServe export (compose's `mar-export`)
#    and the command line; neither the service nor the test tooling in `devtools`.
COPY README.md /src/
COPY multidomain /src/multidomain
COPY training /src/training
COPY reporting /src/reporting
COPY torchserving /src/torchserving
COPY mdprune /src/mdprune
RUN pip wheel --no-deps --wheel-dir /dist /src

# ---------------------------------------------------------------------------------------------
# Final stage: the base image, the virtualenv, the project wheel and an unprivileged user.
FROM ${BASE_IMAGE}

# PYTHONSAFEPATH: the working directory (/work, writable) is not put on sys.path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

COPY --from=build /opt/venv /opt/venv
COPY --from=build /dist/ /tmp/dist/
# The import check fails the build when a package the trainer needs was not copied above.
# /work/data_cache, /work/runs and /models exist owned by the user, so that a fresh named
# volume mounted there is writable by it.
RUN pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && python -c "import multidomain.artifact, training.budget, training.pretrain, \
training.export, reporting.build, torchserving.export, mdprune.cli" \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /work/data_cache /work/runs /models \
    && chown app:app /work /work/data_cache /work/runs /models

USER 10001:10001
WORKDIR /work

ENTRYPOINT ["mdprune", "pipeline", "--model-store", "/models", "--model-name", "default", "--no-serve"]
