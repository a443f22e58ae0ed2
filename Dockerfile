# storage-manager as a container image: what conf/kubernetes/daemonset.yaml runs.
# Build and push from the repository root (README, "Deploying"):
#   docker build -t registry.example.com/nekko/storage-manager:0.1.0 .
#   docker push registry.example.com/nekko/storage-manager:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package and its console script, from this repository.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . && rm -rf /src

# A fixed non-root user: the DaemonSet's runAsUser, and the owner of the cache.
RUN groupadd --system --gid 10001 nekko \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/nekko \
        --shell /usr/sbin/nologin nekko \
    && mkdir -p /var/lib/nekko/cache \
    && chown -R 10001:10001 /var/lib/nekko

ENV CACHE_DIR=/var/lib/nekko/cache
VOLUME ["/var/lib/nekko/cache"]
WORKDIR /var/lib/nekko
USER 10001:10001
EXPOSE 8050 8443
ENTRYPOINT ["storage-manager"]
CMD ["serve", "--address", "0.0.0.0:8050"]
