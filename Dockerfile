FROM python:3.11-slim

# tini reaps the processes the shell handler starts, so none linger as zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY triggers ./triggers
COPY handlers ./handlers
COPY examples ./examples
RUN pip install --no-cache-dir .

RUN useradd --create-home orchestrator
USER orchestrator
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["orchestrator", "run", "--path", "/app/examples"]
