# The unlearn image: Ray + torch + this project. One image for every node of
# cluster/ray-cluster.yaml, the Ray head and GPU workers of cluster/kuberay/*.yaml, the RayJob
# driver and the MLflow server; its name below is used verbatim in each of them.
#   docker build -t ghcr.io/unlearn/unlearn:0.1.0 .
#   docker push ghcr.io/unlearn/unlearn:0.1.0
# The base image's Ray must equal the Ray of every machine that talks to the cluster
# (`ray up`, `ray job submit`): check with `pip show ray`.
FROM rayproject/ray:2.60.0-py311-gpu

LABEL org.opencontainers.image.ref.name="ghcr.io/unlearn/unlearn:0.1.0" \
      org.opencontainers.image.title="unlearn" \
      org.opencontainers.image.description="Machine-unlearning pipeline on Ray, tracked in MLflow"

# The -gpu tag of rayproject/ray is its CUDA 12.1 build and carries no torch: install the
# wheels built for that CUDA first. cu121 ends at torch 2.5.1, which pyproject's ranges
# (torch>=2.5, torchvision>=0.20) accept, so `pip install .` keeps it. Another CUDA:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#   --build-arg TORCH_VERSION=... --build-arg TORCHVISION_VERSION=...
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu121
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1

# The base image's non-root user (uid 1000, group users) owns the Python environment.
USER ray
WORKDIR /home/ray/unlearn
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_TRAIN_V2_ENABLED=1

RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Only what the package needs (see .dockerignore); the configs stay at
# /home/ray/unlearn/pipelines/configs for `unlearn run`.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 unlearn_core ./unlearn_core
COPY --chown=1000:100 pipelines ./pipelines

# The project with its `cluster` extra (pyproject.toml): what the MLflow server in cluster/
# needs, MLflow's basic-auth app (mlflow[auth], which brings Flask-WTF) and the PostgreSQL
# driver psycopg2 (the manifests name it, postgresql+psycopg2://: SQLAlchemy 2.1's default
# would be psycopg 3); plus boto3 for the S3 artifact store (also used by the Ray
# autoscaler's AWS provider on a `ray up` head).
RUN pip install ".[cluster]" "boto3>=1.28" \
 && python -c "import torch, unlearn_core, pipelines.cli, psycopg2, flask_wtf; \
assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
 && unlearn --help > /dev/null
