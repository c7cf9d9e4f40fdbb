# chatd, one node. Build: docker build -t chatd . ; run: docker run -p 9999:9999 -p 8080:8080 chatd
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chatd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels chatd && rm -rf /wheels
USER chatd
# Inside a container the daemon must listen on all interfaces to be reachable.
ENV CHATD_HOST=0.0.0.0 \
    CHATD_PORT=9999 \
    CHATD_HTTP_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 9999 8080
STOPSIGNAL SIGTERM
# Exec form: SIGTERM reaches chatd itself, which shuts down gracefully.
ENTRYPOINT ["chatd", "serve"]
