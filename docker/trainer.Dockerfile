# syntax=docker/dockerfile:1
# One-shot trainer: builds the embedded benchmark, pre-trains the backbone, trains under the
# budget, prunes and exports the artifact to /models/default/<version>/, then exits.
#
#   docker build -f docker/trainer.Dockerfile -t multidomain-pruning/trainer:0.1.0 .
#   docker run --rm -v "$PWD/model_store:/models" multidomain-pruning/trainer:0.1.0 --budget 0.3
#
# Arguments after the image name are appended to the pipeline command (see
# `mdprune pipeline --help`); a repeated option overrides the default given here.
FROM python:3.11.10-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG ANIMAL_MNIST_VERSION=0.4

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /app

# 1. Dependencies: CPU-only torch, then the core and `training` requirements from pyproject.toml.
#    animal_mnist declares tensorflow but we only read its data files: installed without deps.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['training'] \
               + ['torch-model-archiver==0.12.0', 'pyyaml>=6']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps "animal-mnist==${ANIMAL_MNIST_VERSION}" \
    && rm /tmp/requirements.txt

# 2. Code.
COPY README.md ./
COPY multidomain ./multidomain
COPY training ./training
COPY service ./service
COPY torchserving ./torchserving
COPY mdprune ./mdprune
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# 3. Unprivileged user. /work holds the data cache and the backbone run (scratch); /models is
#    created owned by the user so that a fresh named volume mounted there is writable by it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
    && mkdir -p /work /models && chown app:app /work /models
USER 10001:10001
WORKDIR /work

ENTRYPOINT ["mdprune", "pipeline", "--model-store", "/models", "--model-name", "default", "--no-serve"]
