import pytest

from retrain.storage import UnsafeKeyError, join_key, parse_s3_uri, safe_local_path


@pytest.mark.parametrize("key", ["../../etc/x", "/etc/passwd", "a/../../b", "a\x00b", ".."])
def test_safe_local_path_refuses_escapes(tmp_path, key):
    with pytest.raises(UnsafeKeyError):
        safe_local_path(tmp_path, key)


def test_safe_local_path_keeps_odd_names_inside(tmp_path):
    p = safe_local_path(tmp_path, "incoming/批次 1 (修正).json")
    assert tmp_path.resolve() in p.parents


@pytest.mark.parametrize("part", ["../x", "/abs", "a/./b", "a/../b", "x\x00"])
def test_join_key_refuses_climbing(part):
    with pytest.raises(UnsafeKeyError):
        join_key("runs/", part)


def test_join_key_and_uri():
    assert join_key("runs/", "r1", "adapter") == "runs/r1/adapter"
    assert parse_s3_uri("s3://b/runs/r1/") == ("b", "runs/r1/")
    with pytest.raises(ValueError):
        parse_s3_uri("http://b/x")


def test_listing_is_paginated_and_roundtrips(store, tmp_path):
    for i in range(25):
        store.put_bytes(f"incoming/b{i:02d}.json", b"{}\n")
    calls = []
    orig = store.client.list_objects_v2

    def spy(**kw):
        calls.append(kw)
        return orig(**kw)

    store.client.list_objects_v2 = spy
    keys = [o.key for o in store.iter_objects("incoming/", page_size=10)]
    assert len(keys) == 25 and len(calls) == 3  # 10 + 10 + 5, one request per page
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    store.upload_dir(src, "runs/x")
    got = store.download_prefix("runs/x", tmp_path / "dst")
    assert [p.read_text() for p in got] == ["hello"]


def test_get_object_is_none_when_missing_and_the_response_otherwise(store):
    assert store.get_object("runs/nothing.json") is None
    store.put_json("runs/r1/summary.json", {"a": 1})
    obj = store.get_object("runs/r1/summary.json")
    assert obj is not None and obj["Body"].read() == b'{\n  "a": 1\n}' and obj["LastModified"]


def test_folders_lists_one_level_and_delete_removes_one_object(store):
    for key in ("runs/b/x.json", "runs/a/y.json", "runs/a/z/deeper.json", "runs/top.json"):
        store.put_json(key, {})
    assert sorted(store.folders("runs")) == ["a", "b"] == sorted(store.folders("runs/"))
    store.delete("runs/top.json")
    store.delete("runs/never-there.json")  # as S3: no error
    assert not store.exists("runs/top.json") and store.exists("runs/b/x.json")


def test_for_bucket_shares_the_client(store):
    assert store.for_bucket(store.bucket) is store
    other = store.for_bucket("another-bucket")
    assert other.bucket == "another-bucket" and other.client is store.client
