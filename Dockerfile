# syntax=docker/dockerfile:1
# The facesem image for GPU work pools (prefect.yaml: work pool `facesem-gpu`).
#
#   docker build -t facesem:cuda .
#   docker run --rm --gpus all facesem:cuda                 # `facesem run`: the whole pipeline
#
# The project is installed with the Makefile's own recipe (`make install`), so the image and
# a checkout get the same pinned packages. One line differs, on purpose: requirements.lock
# pins `torch==2.13.0+cpu` (the CPU wheel this repository is tested with); here it is swapped
# for a CUDA build of the same version (TORCH below), and the build fails if the installed
# torch has no CUDA. The default, PyPI's `torch==2.13.0`, is the CUDA build on Linux x86_64
# and brings the CUDA libraries as nvidia-* wheels, so the base image needs no CUDA toolkit:
# the host's NVIDIA driver (with the NVIDIA container toolkit) is all it uses. For another
# CUDA version take it from PyTorch's index, e.g.
#   --build-arg TORCH=torch==2.13.0+cu126 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu22.04
FROM ${CUDA_BASE}

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=
# The interpreter the lock was resolved and tested with (cp311 wheels): Python 3.11.
ARG PYTHON=python3.11

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv make ca-certificates \
 && apt-get purge -y software-properties-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/facesem
COPY . .

# The one deviation from the lock (see above); fail if the line is not there to swap.
RUN grep -qx 'torch==2.13.0+cpu' requirements.lock \
 && sed -i "s/^torch==2\.13\.0+cpu\$/${TORCH}/" requirements.lock \
 && grep -qx "${TORCH}" requirements.lock

# Exactly the Makefile's install (venv in .venv, pinned packages, editable project).
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -n "${TORCH_INDEX}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX}"; fi \
 && make install PYTHON=${PYTHON}

RUN .venv/bin/python -c "import torch; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# No .git in the image (.dockerignore): DVC runs without an SCM here.
RUN .venv/bin/dvc config --local core.no_scm true

# `facesem`, `dvc` and `prefect` (the Docker worker runs `prefect flow-run execute`) on PATH.
ENV PATH=/opt/facesem/.venv/bin:${PATH} \
    DVC_NO_ANALYTICS=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# data/ and .dvc/cache hold the results: mount volumes there to keep them between runs
# (prefect.yaml does; `docker run -v facesem-data:/opt/facesem/data -v facesem-dvc-cache:/opt/facesem/.dvc/cache`).
CMD ["facesem", "run"]
