# resnet-serve image. The install step is the README's own (scripts/bootstrap), and the
# container runs `python -m service serve`, the command the end-to-end tests start.
#
#   CPU (default):  docker build -t resnet-serve .
#   NVIDIA GPU:     docker build -t resnet-serve:cuda --build-arg TORCH_INDEX=https://pypi.org/simple .
#                   (PyPI's Linux torch wheels are CUDA builds; run with --gpus all)
#   lean (the API on torch, no OpenVINO, Gradio or grad-cam):
#                   docker build -t resnet-serve:core --build-arg EXTRAS=core .
#   load tests:     docker build -t resnet-serve:loadtest --build-arg EXTRAS=loadtest .
FROM python:3.11-slim-bookworm

# Where torch and torchvision come from: the CPU-only wheels keep the image small.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Extras of pyproject.toml to install (README: "A lean install"): full (the default) is
# everything one machine serves; core is none of them; e.g. EXTRAS=full,parquet adds pyarrow
# for `resnet-serve index import-vectors`, EXTRAS=full,ray the Ray Serve application.
ARG EXTRAS="full"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/app/.venv/bin:$PATH \
    HF_HOME=/weights/huggingface \
    TORCH_HOME=/weights/torch \
    RESNET_SERVE_HOST=0.0.0.0 \
    RESNET_SERVE_PORT=8000 \
    RESNET_SERVE_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY service/ service/
COPY batching/ batching/
COPY index/ index/
COPY loadtest/ loadtest/
RUN TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1 torchcodec==0.16.0 --index-url ${TORCH_INDEX}" \
    scripts/bootstrap ${EXTRAS}

# An unprivileged user owns the two volumes' mount points (named volumes copy this).
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data /weights \
    && chown app:app /data /weights
USER app
VOLUME ["/data", "/weights"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-m", "service.commands.healthcheck"]
CMD ["python", "-m", "service", "serve"]
