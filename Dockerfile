# The stagelr server: `stagelr serve` on CPU-only torch, as a non-root user.
#
#   docker build -t stagelr .
#   docker run -p 8321:8321 -e STAGELR_DATABASE_URL=postgresql://... stagelr
#
# Every setting is a STAGELR_* environment variable (docs/settings.md). The image serves
# on 0.0.0.0:8321 and logs JSON lines; run `stagelr migrate` once before the first start
# (docker-compose.yml does it in its `migrate` service).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/stagelr \
    PATH=/opt/stagelr/bin:$PATH

# torch first, from PyTorch's CPU index: the default index's wheel brings CUDA (GBs).
# The pin matches pyproject.toml (tests/cli/test_deploy.py checks it). Its own layer: the
# project's code changes often, torch does not.
RUN python -m venv /opt/stagelr \
    && pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && useradd --system --uid 10001 --create-home --home-dir /home/stagelr stagelr

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client/ client/
COPY service/ service/
COPY migrations/ migrations/
# The project itself, with the versions pyproject.toml pins (DL3013 asks for pins on
# named packages; this is a local path). torch==2.13.0 is already satisfied above.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server,postgres]"

USER 10001:10001

ENV STAGELR_HOST=0.0.0.0 \
    STAGELR_PORT=8321 \
    STAGELR_LOG_FORMAT=json \
    STAGELR_DATA_DIR=/home/stagelr/data

EXPOSE 8321

# Liveness: the process answers /healthz (python is there; curl is not in the slim image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STAGELR_PORT', '8321') + '/healthz', timeout=4)"]

CMD ["stagelr", "serve"]
