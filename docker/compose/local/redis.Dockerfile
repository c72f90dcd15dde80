# A stand-in for redis:7.4-bookworm where no registry can be reached: Debian bookworm's redis-server
# (7.0; redis-cli from redis-tools for the health check), run as the redis user in /data like the
# official image.
#
#   scripts/build_compose_images.sh  (builds this as retrain/redis:7.0-bookworm)
ARG BASE_IMAGE=retrain/base:bookworm
FROM ${BASE_IMAGE}
RUN DEBIAN_FRONTEND=noninteractive apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
