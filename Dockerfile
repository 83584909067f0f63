FROM python:3.11-slim

# tini reaps the processes the shell handler starts, so none linger as zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home orchestrator

WORKDIR /app

# Dependencies first, in a layer of their own: installed from pyproject.toml
# and an empty stand-in of each package (then uninstalled), so a change to the
# source reuses this layer instead of reinstalling every dependency.
COPY pyproject.toml README.md ./
RUN mkdir orchestrator sources handlers \
    && touch orchestrator/__init__.py sources/__init__.py handlers/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y orchestrator \
    && rm -rf orchestrator sources handlers build ./*.egg-info

# Then the source, installed without touching the dependencies.
COPY orchestrator ./orchestrator
COPY sources ./sources
COPY handlers ./handlers
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

# The examples are the default workflows; compose mounts ./examples over them
# (read-only), and a deployment mounts its own workflows at /workflows.
COPY examples /workflows

# A volume mounted at a path the image has starts with that path's owner: the
# landing zone (and processed/ and failed/, where taken files are moved) must
# belong to the user the orchestrator runs as, not to root.
RUN mkdir -p /landing/processed /landing/failed \
    && chown -R orchestrator:orchestrator /landing
VOLUME ["/landing"]

ENV ORCHESTRATOR_WORKFLOWS_PATH=/workflows \
    ORCHESTRATOR_LANDING_DIR=/landing \
    ORCHESTRATOR_HTTP_HOST=0.0.0.0 \
    ORCHESTRATOR_HTTP_PORT=8080

USER orchestrator
EXPOSE 8080

# With python: the slim image has no curl. Replicas without the api role serve
# no HTTP; their compose service disables this check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ORCHESTRATOR_HTTP_PORT', '8080') + '/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["orchestrator", "run"]
