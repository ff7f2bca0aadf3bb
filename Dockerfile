# The toolkit's image: Locust with loadgen, the reference backend (`loadgen serve`), and the shipped
# locustfiles, profiles and SLO file in /opt/loadgen/locustfiles.
#
#   docker build -t loadgen:0.1.0 .
#   docker run --rm -p 8089:8089 loadgen:0.1.0      # web UI on :8089 against an embedded reference backend
#   docker run --rm loadgen:0.1.0 -f /opt/loadgen/locustfiles/messaging.py --headless -u 50 -t 30s
#
# The tag is the version in pyproject.toml, which deploy/k8s uses. On Kubernetes: docs/kubernetes.md.

# Python as the test suite runs it; requires-python in pyproject.toml must accept it
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loadgen ./loadgen
# uvloop (the `server` extra) speeds up the reference backend; every dependency installs as a wheel
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check '.[server]'

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
COPY locustfiles /opt/loadgen/locustfiles
# Locust lifts the open-file limit to 10,000 at most, and a worker holds one descriptor per connection;
# the entrypoint lifts it to the hard limit first. Arguments starting with a dash are for locust.
RUN printf '%s\n' \
        '#!/bin/sh' \
        'ulimit -n "$(ulimit -Hn)"' \
        'case "$1" in -*) set -- locust "$@" ;; esac' \
        'exec "$@"' \
        > /usr/local/bin/loadgen-entrypoint \
    && chmod 755 /usr/local/bin/loadgen-entrypoint \
    && useradd --uid 10001 --user-group --home-dir /var/lib/loadgen --create-home --shell /usr/sbin/nologin loadgen
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOCUST_LOCUSTFILE=/opt/loadgen/locustfiles/voiceroom.py
# numeric, so Kubernetes' runAsNonRoot can check it
USER 10001:10001
# results/<UTC time>-<scenario>/ are written here
WORKDIR /var/lib/loadgen
# 5557: workers to the master; 8089: web UI; 9646: Prometheus metrics
EXPOSE 5557 8089 9646
ENTRYPOINT ["/usr/local/bin/loadgen-entrypoint"]
CMD ["locust"]
