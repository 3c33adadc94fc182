# grantkeeper serve: the HTTP token broker, in a container (docs/deployment.md).
#
#   docker build -t grantkeeper .
#   docker run -d --name grantkeeper -p 127.0.0.1:8080:8080 -v grantkeeper:/var/lib/grantkeeper \
#       --env-file /etc/grantkeeper/grantkeeper.env grantkeeper
#
# TLS: the container speaks plain HTTP on port 8080 and is meant to sit behind a TLS-terminating reverse proxy
# (Caddy, nginx, a cloud load balancer); --behind-proxy makes serve take the client address and scheme from that
# proxy's X-Forwarded-* headers. API keys and the proxied requests cross that hop, so never publish 8080 beyond the
# host or the private network the reverse proxy sits on.
#
# Secrets never go in this file or in the image: give GRANTKEEPER_KEY (the store's encryption key ring) and any
# client-secret variables at run time (--env-file, or a secret file read by GRANTKEEPER_KEY_COMMAND, e.g.
# GRANTKEEPER_KEY_COMMAND="cat /run/secrets/grantkeeper_key"). With neither, the SQLite store creates its key file
# beside itself in the volume (mode 0600): it works, but a copy of the volume is then a copy of the key too.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRANTKEEPER_STORE=sqlite:///var/lib/grantkeeper/grants.db \
    GRANTKEEPER_RECOVERY_DIR=/var/lib/grantkeeper/recovery

# A fixed, unprivileged uid/gid so that a volume's owner stays the same across rebuilds.
RUN groupadd --system --gid 10001 grantkeeper \
    && useradd --system --uid 10001 --gid grantkeeper --home-dir /var/lib/grantkeeper --no-create-home \
        --shell /usr/sbin/nologin grantkeeper \
    && install -d -o grantkeeper -g grantkeeper -m 0700 /var/lib/grantkeeper

COPY pyproject.toml README.md /tmp/grantkeeper/
COPY src /tmp/grantkeeper/src
RUN pip install --no-cache-dir '/tmp/grantkeeper[serve,postgres]' && rm -rf /tmp/grantkeeper

USER grantkeeper:grantkeeper
WORKDIR /var/lib/grantkeeper
VOLUME ["/var/lib/grantkeeper"]
EXPOSE 8080

# No curl in the slim image: the interpreter is the probe. urlopen raises on anything but 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)"]

# serve drains in-flight requests on SIGTERM (docker stop sends it, then SIGKILL after --time, default 10 s).
STOPSIGNAL SIGTERM
CMD ["grantkeeper", "serve", "--host", "0.0.0.0", "--port", "8080", "--behind-proxy"]
