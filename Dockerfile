# The killswitch image used by compose.yaml for the aggregator, the sidecars and the simulated
# order routers. With Docker and a registry it builds as it is (`docker compose up --build`);
# `./dev stack` builds it offline on a Debian base of its own (`--build-arg BASE=...`, which
# needs python3 and python3-venv) from wheels it builds on the host into .stack/wheels.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/killswitch/bin:$PATH

# ssh-keygen: operators sign arms with OpenSSH (`killswitch arm --key`); an offline base
# built with openssh-client already has it and never reaches for a package mirror.
RUN command -v ssh-keygen >/dev/null 2>&1 || (apt-get update \
 && apt-get install -y --no-install-recommends openssh-client \
 && rm -rf /var/lib/apt/lists/*)
# .dockerignore keeps the context to what the build needs: pyproject.toml, README.md (the
# package readme), killswitch/ and any wheels in .stack/wheels.
COPY . /src
# The flight recorder's C writer (docs/RECORDER.md, "The writer") is optional at install:
# python:3.11-slim has Python's headers but no C compiler, so the image built from source
# runs the Python writer; the offline build installs the wheel built on the host, with the
# C writer when the host's Python is the base's 3.11. `killswitch_recorder_writer_info` says.
# A venv, not the system site-packages: Debian's python3 refuses system-wide pip installs.
# /var/lib/killswitch belongs to nobody so that a volume mounted there (a sidecar's state
# directory: the highest epoch it has seen) starts out writable by the service.
RUN python3 -m venv /opt/killswitch \
 && if ls /src/.stack/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /src/.stack/wheels killswitch; \
    else \
        pip install /src; \
    fi \
 && rm -rf /src \
 && mkdir -p /var/lib/killswitch /etc/killswitch \
 && chown 65534:65534 /var/lib/killswitch /etc/killswitch

WORKDIR /
USER 65534:65534
# 7000: gate socket (sidecar); 9100/9101: Prometheus metrics (sidecar/aggregator).
EXPOSE 7000 9100 9101
CMD ["killswitch", "--help"]
