# The orchestrator's image: front door and push worker in one, on Cloud Run.
# Build: docker build -t ml-orchestrator . (or scripts/deploy.sh, with Cloud Build)

FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock ./
# The runtime dependencies exactly as locked, each file checked against its sha256
# (scripts/lock.sh writes the lock), into a prefix the final stage copies whole.
RUN pip install --no-cache-dir --require-hashes --prefix=/install -r requirements.lock

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /install /usr/local
# The app is its source: `python -m service` imports it from the working directory.
COPY service ./service
COPY flows ./flows
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    FLOWS_DIR=/app/flows
USER 10001
EXPOSE 8080
# python -m service checks settings and flows (one clear line if wrong), serves on
# $PORT with a worker process per CPU (WEB_CONCURRENCY) and drains on SIGTERM.
CMD ["python", "-m", "service"]
