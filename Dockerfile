# The killswitch image used by compose.yaml for the aggregator, the sidecars and the simulated
# order routers. Only the package is copied in: tests, dashboards and deploy/ are not needed
# at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ssh-keygen: operators sign arms with OpenSSH (`killswitch arm --key`).
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# pyproject.toml names README.md as the package readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY killswitch ./killswitch
RUN pip install . && rm -rf /src

WORKDIR /
USER nobody
# 7000: gate socket (sidecar); 9100/9101: Prometheus metrics (sidecar/aggregator).
EXPOSE 7000 9100 9101
CMD ["killswitch", "--help"]
