FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY mappings ./mappings
COPY connectors ./connectors
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --system --uid 10001 pivot && mkdir -p /data && chown pivot /data
USER pivot
ENV PIVOT_HOST=0.0.0.0 PIVOT_DATA_DIR=/data
EXPOSE 8080 2575
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
CMD ["pivot", "serve"]
