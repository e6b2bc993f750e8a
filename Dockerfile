# The service's image: `docker build -t db-service .`
#
# - build stage: a virtual environment at /opt/venv with the pinned requirements. Every pinned
#   package ships a manylinux wheel for CPython 3.11 (x86_64 and aarch64), and --only-binary makes
#   that a rule: nothing is compiled, so no compiler is needed anywhere. If a future dependency must
#   be compiled, install build-essential (and libpq-dev) in this stage only.
# - runtime stage: the same slim base, the venv and the application code, a non-root user, no
#   compiler, no pip cache, no tests. gunicorn is PID 1 (exec-form CMD) and gets SIGTERM directly.
#
# The same image runs every role; only the command differs:
#   api      gunicorn -c gunicorn.conf.py                (the default CMD)
#   migrate  sh -c "flask db wait --migration && flask db upgrade"   (compose, Kubernetes Job)
# Configuration comes from the environment only (.env.example lists every variable); the image
# defaults to APP_ENV=production, so a container without DATABASE_URL and SECRET_KEY stops at once
# with one line naming the missing variable.

# Both stages use the same pinned base (a patch release on Debian bookworm). To pin it harder, append
# its digest: python:3.11.14-slim-bookworm@sha256:<digest from `docker buildx imagetools inspect`>.
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

# Only the requirements first: this layer is rebuilt when they change, not on every code change.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt


FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="db-service" \
      org.opencontainers.image.description="Flask service that owns a PostgreSQL database layer and reports its health" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}" \
    FLASK_APP=wsgi \
    APP_ENV=production \
    PORT=8000

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify the user without a passwd lookup.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The code stays owned by root: the service user can read it but not change it.
COPY wsgi.py gunicorn.conf.py .flaskenv ./
COPY service/ ./service/
COPY migrations/ ./migrations/
COPY docs/openapi.json ./docs/openapi.json
# Bytecode compiled now, as root: at run time nothing is written (PYTHONDONTWRITEBYTECODE and a
# read-only root filesystem) and nothing is recompiled at each start.
RUN python -m compileall -q wsgi.py service migrations

USER 10001:10001

EXPOSE 8000

# Liveness only (no database): an outage must not mark every container unhealthy and restarted.
# Python's urllib, because the slim image has no curl; PORT is the variable gunicorn.conf.py binds.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health/live' % (os.environ.get('PORT') or '8000'), timeout=2)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py"]
