"""S3 access from the Airflow connection named in conf (``airflow.aws_conn_id``), at run time only."""

from __future__ import annotations

from typing import Any

from retrain.config import Settings
from retrain.storage import ObjectStore


def object_store(
    settings: Settings,
    bucket: str | None = None,
    aws_conn_id: str | None = None,
    client_config: Any = None,
) -> ObjectStore:
    """The pipeline bucket (or ``bucket``) through the boto3 client of conf's connection (or
    ``aws_conn_id``), endpoint_url from its extra; ``client_config`` a botocore ``Config``."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id or settings.airflow.aws_conn_id, config=client_config)
    return ObjectStore(hook.get_conn(), bucket or settings.s3.bucket)


def listener_object_store(settings: Settings) -> ObjectStore:
    """The bucket for code that runs inside the scheduler (listeners): short timeouts, one attempt,
    so a slow S3 cannot stall scheduling (``airflow.listener_s3_timeout_s``)."""
    from botocore.config import Config

    timeout = settings.airflow.listener_s3_timeout_s
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    return object_store(settings, client_config=config)


def s3_environment(settings: Settings) -> dict[str, str]:
    """AWS_* variables for a trainer process/container, from the connection (secrets: pass privately)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=settings.airflow.aws_conn_id)
    creds = hook.get_credentials()
    env: dict[str, Any] = {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1",
    }
    if creds.token:
        env["AWS_SESSION_TOKEN"] = creds.token
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return {k: str(v) for k, v in env.items() if v}
