"""read_object against a real S3 API (moto): streaming, format by prefix, object limits, ETag."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from retrain.config import Settings
from retrain.formats import read_object
from retrain.storage import ObjectInfo, ObjectStore

GOOD = {
    "text": "浙商银行企业信贷部叶老桂博士",
    "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}},
}


@pytest.fixture
def store(monkeypatch) -> Any:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        s = ObjectStore(boto3.client("s3", region_name="us-east-1"), "retrain-test")
        s.ensure_bucket()
        yield s


def put(store: ObjectStore, key: str, data: bytes) -> ObjectInfo:
    store.put_bytes(key, data)
    return store.head(key)


def with_intake(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"intake": settings.intake.model_copy(update=changes)})


def ls_tasks(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "data": {"text": f"叶老桂博士{i}"},
            "annotations": [
                {
                    "result": [
                        {
                            "type": "labels",
                            "value": {"start": 0, "end": 3, "text": "叶老桂", "labels": ["PER"]},
                        }
                    ]
                }
            ],
        }
        for i in range(n)
    ]


def test_jsonl_object(store, settings):
    data = "\n".join(
        json.dumps(GOOD | {"text": GOOD["text"] + str(i)}, ensure_ascii=False) for i in range(500)
    ).encode()
    data += b"\nnot json\n"
    obj = put(store, "incoming/2024/a.jsonl", data)
    records, rejections, stats = read_object(store, obj, settings, chunk_size=1000)
    assert len(records) == 500 and [r.reason for r in rejections] == ["not_json"]
    assert rejections[0].line == 501
    assert records[0].source_etag == obj.etag and records[-1].line == 500
    assert stats["lines"] == 501 and stats["format"] == "cluener" and stats["reasons"] == {"not_json": 1}
    assert stats["records"] == 501


def test_label_studio_array_longer_than_the_line_limit(store, settings):
    # A minified export is one line far above max_line_bytes: arrays are bounded by the object limit.
    conf = with_intake(settings, max_line_bytes=1000)
    obj = put(store, "incoming/ls/export.json", json.dumps(ls_tasks(200), ensure_ascii=False).encode())
    assert obj.size > 10 * 1000
    records, rejections, stats = read_object(store, obj, conf, chunk_size=4096)
    assert len(records) == 200 and not rejections
    assert {r.fmt for r in records} == {"label_studio"} and records[5].line == 6
    assert records[0].entities[0].label == "name"


def test_array_above_the_object_limit_is_refused_unread(store, settings):
    data = json.dumps(ls_tasks(50), ensure_ascii=False).encode()
    obj = put(store, "incoming/ls/big.json", data)
    records, rejections, stats = read_object(
        store, obj, with_intake(settings, max_object_bytes=len(data) - 1)
    )
    assert not records and len(rejections) == 1
    assert (rejections[0].reason, rejections[0].line) == ("object_too_large", 0)
    assert "max_object_bytes" in rejections[0].detail
    # The same limit applied while reading when the listing's size is stale or unknown:
    stale = ObjectInfo(obj.key, obj.etag, size=0)
    records, rejections, _ = read_object(store, stale, with_intake(settings, max_object_bytes=len(data) // 2))
    assert not records and [r.reason for r in rejections] == ["object_too_large"]


def test_format_fixed_by_prefix(store, settings):
    doccano = b'{"text": "\xe5\x8f\xb6\xe8\x80\x81\xe6\xa1\x82", "label": [[0, 3, "name"]]}\n'
    cluener = json.dumps(
        {"text": "叶老桂博士", "label": {"name": {"叶老桂": [[0, 2]]}}}, ensure_ascii=False
    ).encode()
    obj = put(store, "incoming/doccano/x.jsonl", cluener + b"\n" + doccano)
    conf = with_intake(settings, formats={"incoming/doccano/": "doccano"})
    records, rejections, stats = read_object(store, obj, conf)
    assert [r.fmt for r in records] == ["doccano"] and [r.reason for r in rejections] == ["mixed_format"]
    assert stats["format"] == "doccano" and stats["format_source"] == "conf intake.formats"


def test_a_50_mb_line_through_s3(store, settings):
    good = json.dumps(GOOD, ensure_ascii=False).encode()
    data = (
        good
        + b'\n{"text": "'
        + b"a" * (50 * 1024 * 1024)
        + b'", "label": {}}\n'
        + good.replace(b"\xe5\x8d\x9a", b"\xe5\x8f\xb8")
        + b"\n"
    )
    obj = put(store, "incoming/huge.jsonl", data)
    del data
    records, rejections, stats = read_object(store, obj, settings)
    assert [r.line for r in records] == [1, 3]
    assert [(r.reason, r.line) for r in rejections] == [("line_too_long", 2)]
    assert len(rejections[0].raw) <= 201


def test_empty_and_binary_objects(store, settings):
    empty = put(store, "incoming/empty.jsonl", b"")
    records, rejections, _ = read_object(store, empty, settings)
    assert not records and [(r.reason, r.line, r.source_key) for r in rejections] == [
        ("empty_object", 0, "incoming/empty.jsonl")
    ]
    binary = put(store, "incoming/img.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    records, rejections, _ = read_object(store, binary, settings)
    assert [r.reason for r in rejections] == ["binary"]


def test_object_replaced_after_listing_is_not_parsed_silently(store, settings):
    old = put(store, "incoming/a.jsonl", json.dumps(GOOD, ensure_ascii=False).encode())
    put(store, "incoming/a.jsonl", b"replaced\n")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        read_object(store, old, settings)
