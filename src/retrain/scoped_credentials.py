"""Per-stage S3 credentials: a role made for one run's stage, allowed only what that stage touches.

``s3.scoped_credentials: assume_role`` (conf/pipeline.yaml): before a trainer stage starts, the
launcher (with the long-lived credentials of the Airflow connection) creates an IAM role for this
attempt under a path named for the run and the stage (``<scoped_role_path><retrain-stage-run>/``),
puts ONE inline policy on it (`stage_policy`, from `stage_grants`), assumes it for
``s3.scoped_duration_seconds``, waits until it can read the stage's request (`wait_until_usable`)
and hands the trainer only those temporary credentials. After the stage the role is deleted, so its
credentials stop working before they expire; a relaunch first deletes every role under that path
(an orphaned container of a dead worker loses its access then). A new role name per attempt, as a
session must not carry over to a new role of an old name.

What each stage may touch, from the request the launcher wrote into the run's prefix:

    every stage  runs/<id>/*               read, write, delete (requests, results, checkpoints, logs)
    train        the dataset version        read (``dataset_uri``: datasets/<version>/*)
                 the adapter store          read + put, no delete (``adapter_store_uri``: adapters/*;
                                            content-addressed, so the new adapter's digest is not known
                                            before training; see `retrain.adapters`)
    evaluate     the golden set             read (``golden_uri``) and every s3:// benchmark file
                 candidate, champion        read (their ``adapter_uri`` folders)
                 eval_cache/*               read + put (results cached by adapter digest)
    export       the adapter it merges      read (``adapter_uri``)

plus ``s3:ListBucket`` on the buckets involved: S3 answers a missing key with 404 only to a caller
that may list the bucket (403 otherwise), and the stages test for keys that are not there yet. A
listing shows key names, never content; ListBucket narrowed by ``s3:prefix`` would not help, as a
HeadObject carries no prefix.

Why the role's own policy and not a session policy on a shared role: IAM enforces both on AWS, but
the per-run role can be deleted (revoking what an orphan holds), and moto, the test S3, enforces a
role's own policies only. MinIO has no IAM roles (no CreateRole): its AssumeRole returns credentials
of the calling user narrowed by a session policy, which this module does not issue; keep ``off``
there (see conf/pipeline.yaml).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retrain import runs
from retrain.evaluate import CACHE_PREFIX
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

#: The inline policy's name on every per-stage role.
POLICY_NAME = "retrain-stage-s3"
#: IAM's limit on a role name.
MAX_ROLE_NAME = 64
#: The attempt's suffix on a role name: ``-`` and 6 hex digits.
ATTEMPT_SUFFIX = 7
#: AWS: a role just created can take seconds before STS lets it be assumed (eventual consistency).
ASSUME_WAIT_S = 30.0


@dataclass(frozen=True)
class Grants:
    """What one stage may do in S3: ``s3://bucket/prefix/`` (a folder) or ``s3://bucket/key`` (one object)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()  # read, put and delete
    put: tuple[str, ...] = ()  # read and put, never delete

    def buckets(self) -> list[str]:
        return sorted({parse_s3_uri(u)[0] for u in (*self.read, *self.write, *self.put)})


@dataclass(frozen=True)
class ScopedCredentials:
    role_name: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime

    def environment(self) -> dict[str, str]:
        """The AWS_* credential variables a trainer process reads (boto3's own names)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }


def _folder(uri: str) -> str:
    return uri.rstrip("/") + "/"


def stage_grants(store: ObjectStore, run_prefix: str, stage: str) -> Grants:
    """The grants of ``stage`` of the run at ``run_prefix`` in ``store``, from the stage's request."""
    run = _folder(store.uri(run_prefix))
    if stage == "train":
        tr = runs.read(store, join_key(run_prefix, runs.TRAIN_REQUEST), runs.TrainRequest)
        return Grants(read=(_folder(tr.dataset_uri),), write=(run,), put=(_folder(tr.adapter_store_uri),))
    if stage == "evaluate":
        er = runs.read(store, join_key(run_prefix, runs.EVAL_REQUEST), runs.EvalRequest)
        reads = [er.golden_uri, *(b.uri for b in er.benchmarks)]
        reads += [_folder(m.adapter_uri) for m in (er.candidate, er.champion) if m.adapter_uri]
        cache = _folder(store.uri(CACHE_PREFIX))
        return Grants(read=tuple(u for u in reads if u.startswith("s3://")), write=(run,), put=(cache,))
    if stage == "export":
        xr = runs.read(store, join_key(run_prefix, runs.EXPORT_REQUEST), runs.ExportRequest)
        adapter = _folder(xr.adapter_uri)
        return Grants(read=(adapter,) if adapter.startswith("s3://") else (), write=(run,))
    raise ValueError(f"unknown trainer stage {stage!r} (known: train, evaluate, export)")


def _arns(uris: tuple[str, ...]) -> list[str]:
    """``s3://b/p/`` -> ``arn:aws:s3:::b/p/*``; ``s3://b/k`` -> ``arn:aws:s3:::b/k``."""
    out = []
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        out.append(f"arn:aws:s3:::{bucket}/{key}*" if key.endswith("/") else f"arn:aws:s3:::{bucket}/{key}")
    return sorted(set(out))


def stage_policy(grants: Grants) -> dict[str, Any]:
    """The IAM policy document of `Grants` (nothing outside them: no Deny needed, IAM denies by default)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListForMissingKeys",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": [f"arn:aws:s3:::{b}" for b in grants.buckets()],
        },
        {
            "Sid": "Read",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": _arns((*grants.read, *grants.write, *grants.put)),
        },
    ]
    if grants.write:
        statements.append(
            {
                "Sid": "RunPrefix",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": _arns(grants.write),
            }
        )
    if grants.put:
        statements.append(
            {
                "Sid": "PublishOnly",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": _arns(grants.put),
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def role_name(run_id: str, stage: str, prefix: str = "retrain") -> str:
    """``retrain-<stage>-<run id>`` in IAM's characters, at most 57 (an attempt adds 7); a long id is
    cut and hashed, so the name stays one per run and stage (a relaunch finds its earlier attempts)."""
    safe = re.sub(r"[^A-Za-z0-9+=,.@_-]", "-", run_id)
    name = f"{prefix}-{stage}-{safe}"
    limit = MAX_ROLE_NAME - ATTEMPT_SUFFIX
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    return f"{name[: limit - 13]}-{digest}"


def role_path(path: str, name: str) -> str:
    """The IAM path holding every attempt's role of one run and stage: ``<path><name>/``."""
    return f"{path}{name}/"


def trust_principal(caller_arn: str) -> str:
    """Who may assume the role: the launcher's own identity. An assumed-role session
    (``arn:aws:sts::<acct>:assumed-role/<role>/<session>``) is trusted as its role."""
    m = re.fullmatch(r"arn:(aws[\w-]*):sts::(\d+):assumed-role/([^/]+)/.+", caller_arn)
    return f"arn:{m[1]}:iam::{m[2]}:role/{m[3]}" if m else caller_arn


def revoke(iam: Any, name: str) -> bool:
    """Delete the role ``name`` and its inline policies (its sessions stop working); False when
    there was none."""
    try:
        policies = iam.list_role_policies(RoleName=name)["PolicyNames"]
    except iam.exceptions.NoSuchEntityException:
        return False
    for policy in policies:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)
    log.info("deleted the per-stage role %s", name)
    return True


def revoke_earlier(iam: Any, path: str) -> list[str]:
    """Delete every role under ``path`` (the roles of earlier attempts of one run and stage)."""
    names = [
        role["RoleName"]
        for page in iam.get_paginator("list_roles").paginate(PathPrefix=path)
        for role in page["Roles"]
        if role["Path"] == path
    ]
    for name in names:
        revoke(iam, name)
    return names


#: The request each stage reads first (in its run's prefix): what `wait_until_usable` probes.
STAGE_REQUESTS = {"train": runs.TRAIN_REQUEST, "evaluate": runs.EVAL_REQUEST, "export": runs.EXPORT_REQUEST}


def wait_until_usable(
    store: ObjectStore, creds: ScopedCredentials, key: str, timeout_s: float = ASSUME_WAIT_S
) -> None:
    """Return once ``creds`` may read ``key`` of ``store``'s bucket (the stage's request). On AWS a new
    role's policy takes a few seconds to apply everywhere; a trainer started before that would fail its
    first read with 403. AccessDenied after ``timeout_s`` is raised."""
    import boto3
    from botocore.exceptions import ClientError

    meta = store.client.meta
    client = boto3.client(
        "s3",
        endpoint_url=meta.endpoint_url,
        region_name=meta.region_name,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.head_object(Bucket=store.bucket, Key=key)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("403", "AccessDenied") or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _assume(sts: Any, role_arn: str, session: str, duration_s: int) -> dict[str, Any]:
    deadline = time.monotonic() + ASSUME_WAIT_S
    while True:
        try:
            return dict(
                sts.assume_role(RoleArn=role_arn, RoleSessionName=session, DurationSeconds=duration_s)[
                    "Credentials"
                ]
            )
        except sts.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] != "AccessDenied" or time.monotonic() > deadline:
                raise
            time.sleep(2)  # the new role is not visible to STS yet


def issue(
    iam: Any,
    sts: Any,
    grants: Grants,
    name: str,
    duration_s: int,
    path: str = "/retrain/",
    permissions_boundary: str | None = None,
) -> ScopedCredentials:
    """Delete the roles of earlier attempts (path ``<path><name>/``), create this attempt's role
    ``<name>-<6 hex>`` there with `stage_policy` as its only policy, and assume it for ``duration_s``
    seconds. A new name per attempt: a session is not carried over to a new role of the old name."""
    where = role_path(path, name)
    earlier = revoke_earlier(iam, where)
    if earlier:
        log.warning("roles of earlier attempts were still there, deleted (credentials revoked): %s", earlier)
    caller = sts.get_caller_identity()["Arn"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": trust_principal(caller)}, "Action": "sts:AssumeRole"}
        ],
    }
    attempt = f"{name}-{secrets.token_hex(3)}"
    extra = {"PermissionsBoundary": permissions_boundary} if permissions_boundary else {}
    role = iam.create_role(
        RoleName=attempt,
        Path=where,
        AssumeRolePolicyDocument=json.dumps(trust),
        MaxSessionDuration=max(3600, duration_s),  # IAM's range is 3600-43200
        Description="retrain: one stage of one run; deleted when the stage ends",
        **extra,
    )["Role"]
    try:
        iam.put_role_policy(
            RoleName=attempt, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(stage_policy(grants))
        )
        creds = _assume(sts, role["Arn"], attempt, duration_s)
    except Exception:
        revoke(iam, attempt)
        raise
    log.info("per-stage role %s: credentials until %s", attempt, creds["Expiration"])
    return ScopedCredentials(
        role_name=attempt,
        access_key_id=creds["AccessKeyId"],
        secret_access_key=creds["SecretAccessKey"],
        session_token=creds["SessionToken"],
        expiration=creds["Expiration"],
    )


@contextmanager
def scoped(
    iam: Any, sts: Any, grants: Grants, name: str, duration_s: int, **kwargs: Any
) -> Iterator[ScopedCredentials]:
    """`issue` on entry, `revoke` on exit (also when the stage failed)."""
    creds = issue(iam, sts, grants, name, duration_s, **kwargs)
    try:
        yield creds
    finally:
        revoke(iam, creds.role_name)
