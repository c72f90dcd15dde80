# A stand-in for postgres:16-bookworm where no registry can be reached: Debian bookworm's PostgreSQL
# (15) with the parts of the official image's entrypoint docker-compose.yml relies on
# (postgres-entrypoint.sh: POSTGRES_USER/PASSWORD/DB on an empty PGDATA, /docker-entrypoint-initdb.d,
# password auth over TCP, pg_isready).
#
#   scripts/build_compose_images.sh  (builds this as retrain/postgres:15-bookworm)
ARG BASE_IMAGE=retrain/base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 "$PGDATA"
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
