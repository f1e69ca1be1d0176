# One image for every fin-relay process (ingest, worker, simulator); the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
# The component folders are installed as fin_relay.<folder> (pyproject.toml: package-dir).
COPY fin_relay ./fin_relay
COPY worker ./worker
COPY producer ./producer
COPY webhook_ingest ./webhook_ingest
COPY simulator ./simulator
COPY bench ./bench
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 finrelay
USER finrelay
EXPOSE 8000
CMD ["fin-relay", "--help"]
