# A stand-in for apache/airflow:3.3.2-python3.11 where no registry can be reached: the parts of the
# official image that docker/airflow/Dockerfile and docker-compose.yml rely on, on the local Debian base
# (scripts/build_base_image.sh). Python 3.11 (Debian's) in a venv the airflow user owns (pip installs
# into it, as it does into ~/.local in the official image), user airflow uid 50000 gid 0, AIRFLOW_HOME
# /opt/airflow writable by group 0 (compose runs it as AIRFLOW_UID:0), curl for the health checks, and
# /entrypoint (entrypoint.sh here). Airflow itself comes from the lock in docker/airflow/Dockerfile.
#
#   scripts/build_compose_images.sh  (builds this as retrain/airflow-base:3.3.2-python3.11)
ARG BASE_IMAGE=retrain/base:bookworm
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW_USER_HOME_DIR=/home/airflow \
    PATH=/home/airflow/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates curl \
        dumb-init \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/dags /opt/airflow/plugins /opt/retrain \
    && chown -R airflow:0 /opt/airflow /opt/retrain \
    && chmod -R g+rwX /opt/airflow /opt/retrain

COPY entrypoint.sh /entrypoint
USER airflow
RUN python3.11 -m venv /home/airflow/.venv && chmod -R g+rwX /home/airflow
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD ["--help"]
