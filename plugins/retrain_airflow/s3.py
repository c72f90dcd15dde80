"""S3 access from the Airflow connection named in conf (``airflow.aws_conn_id``), at run time only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retrain import scoped_credentials
from retrain.config import Settings
from retrain.scoped_credentials import ScopedCredentials
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


#: The variables of `s3_environment` that are secrets (masked in a trainer's output).
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def s3_environment(aws_conn_id: str, credentials: ScopedCredentials | None = None) -> dict[str, str]:
    """AWS_* variables (credentials, region, endpoint) for a trainer process or container, from the
    Airflow AWS connection ``aws_conn_id``; a clear error when there are no credentials at all.
    With ``credentials`` (a stage's scoped ones, `stage_credentials`) those replace the connection's.

    Secrets: give them to a process privately (its environment, DockerOperator's
    ``private_environment``), never through a template field.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    if credentials is not None:
        where = {
            "AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1",
            "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
        }
        return {**{k: str(v) for k, v in where.items() if v}, **credentials.environment()}
    # Without the connection, the hook falls back to boto3's own credential chain (an instance
    # role, for instance); with neither there is nothing to give the trainer.
    if hook.get_session().get_credentials() is None:
        raise RuntimeError(
            f"no S3 credentials for the trainer: the Airflow connection {aws_conn_id!r} "
            "(conf airflow.aws_conn_id) does not exist or has none, and boto3 found none either"
        )
    creds = hook.get_credentials()  # also masks the secret key and token in task logs
    env = {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_SESSION_TOKEN": creds.token,
        "AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1",
        "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
    }
    return {k: str(v) for k, v in env.items() if v}


def _aws_client(aws_conn_id: str, service: str) -> Any:
    """A boto3 client for ``service`` through the connection (its endpoint_url too: moto in tests)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type=service).get_conn()


@contextmanager
def stage_credentials(
    settings: Settings, store: ObjectStore, run_prefix: str, stage: str, aws_conn_id: str | None = None
) -> Iterator[ScopedCredentials | None]:
    """conf ``s3.scoped_credentials``: ``off`` yields None (the trainer gets the connection's
    credentials); ``assume_role`` yields the stage's own short-lived credentials
    (`retrain.scoped_credentials`), made with the connection's and revoked when the block ends."""
    sc = settings.s3
    if sc.scoped_credentials == "off":
        yield None
        return
    conn = aws_conn_id or settings.airflow.aws_conn_id
    grants = scoped_credentials.stage_grants(store, run_prefix, stage)
    name = scoped_credentials.role_name(run_prefix.rstrip("/").rsplit("/", 1)[-1], stage)
    with scoped_credentials.scoped(
        _aws_client(conn, "iam"),
        _aws_client(conn, "sts"),
        grants,
        name,
        sc.scoped_duration_seconds,
        path=sc.scoped_role_path,
        permissions_boundary=sc.scoped_permissions_boundary,
    ) as creds:
        request = scoped_credentials.STAGE_REQUESTS[stage]
        scoped_credentials.wait_until_usable(store, creds, f"{run_prefix.rstrip('/')}/{request}")
        yield creds
