# chatd in a container: the chat on 9999, TLS on 9998 (with a certificate), the
# web page, /healthz and /metrics on 8080; the database in the /data volume.
#
#   docker build -t chatd .
#   docker run -p 9999:9999 -p 8080:8080 -v chatd-data:/data chatd
#
# docker-compose.yml runs one node, or two nodes and Redis with --profile cluster.
# Any builder builds it: BuildKit, Docker's classic builder, podman/buildah.

# Stage 1: chatd and everything it depends on, installed into a virtualenv.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The base image's pip installs into it (--python), so pip itself stays out.
RUN python -m venv --without-pip /opt/chatd \
    && pip --python /opt/chatd/bin/python install --no-cache-dir .

# Stage 2: that virtualenv in a clean image; no sources, no build tools.
FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="chatd" \
      org.opencontainers.image.description="A line-protocol chat daemon" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The virtualenv's python is the base image's, at the same path in both stages.
COPY --from=build /opt/chatd /opt/chatd
ENV PATH=/opt/chatd/bin:$PATH
# A fixed numeric uid/gid: files in the volume keep the same owner across
# rebuilds, and USER needs no lookup in the image's /etc/passwd. /data is
# created owned by it before VOLUME, so a new named volume starts out writable.
RUN groupadd --system --gid 10001 chatd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chatd \
    && install -d -o 10001 -g 10001 -m 0750 /data
VOLUME ["/data"]
# Inside a container the daemon must listen on every interface to be reachable
# through a published port. --redis (CHATD_REDIS) replaces the database with
# Redis; CHATD_TLS_CERT and CHATD_TLS_KEY add the TLS port. IRC clients
# connect on 6667 (CHATD_IRC_PORT).
ENV CHATD_HOST=0.0.0.0 \
    CHATD_PORT=9999 \
    CHATD_HTTP_PORT=8080 \
    CHATD_IRC_PORT=6667 \
    CHATD_DB=/data/chatd.db
USER 10001:10001
EXPOSE 9999 9998 8080 6667
# chatd serve shuts down gracefully on SIGTERM: clients are told, their queued
# output is flushed (--shutdown-grace, 5 s), then it exits 0. Give it longer
# than that before the SIGKILL (docker stop -t 10, compose stop_grace_period).
STOPSIGNAL SIGTERM
# GET /healthz on the web port (the same environment as serve tells it where):
# 200 while the daemon accepts connections and its store commits.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["chatd", "health", "--timeout", "4"]
# Exec form: chatd is PID 1 and receives SIGTERM itself. Other subcommands run
# in place of serve: docker run --rm -it chatd connect HOST
ENTRYPOINT ["chatd"]
CMD ["serve"]
