"""retrain.adapters: content-addressed, write-once adapters, verified wherever they are fetched (moto S3)."""

from __future__ import annotations

import pytest

from retrain.adapters import (
    ADAPTER_FILES,
    AdapterIntegrityError,
    adapter_digest,
    digest_of_uri,
    fetch_adapter,
    publish_adapter,
    verify_adapter,
)


def _adapter(tmp_path, weights: bytes = b"w1"):
    d = tmp_path / f"adapter-{weights.hex()}"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (d / "adapter_model.safetensors").write_bytes(weights)
    (d / "README.md").write_text("not part of the content")
    return d


def test_digest_covers_exactly_the_adapter_files(tmp_path):
    a = _adapter(tmp_path, b"w1")
    d1 = adapter_digest(a)
    (a / "README.md").write_text("changed")
    assert adapter_digest(a) == d1
    (a / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')
    assert adapter_digest(a) != d1
    (a / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterIntegrityError, match="adapter_model.safetensors is missing"):
        adapter_digest(a)


def test_publish_is_content_addressed_and_write_once(store, tmp_path):
    uri1, d1 = publish_adapter(store, "adapters/", _adapter(tmp_path, b"w1"))
    assert uri1 == store.uri(f"adapters/{d1}/") and digest_of_uri(uri1) == d1
    etags = {n: store.head(f"adapters/{d1}/{n}").etag for n in ADAPTER_FILES}
    assert publish_adapter(store, "adapters/", _adapter(tmp_path, b"w1")) == (uri1, d1)  # same content: no-op
    assert {n: store.head(f"adapters/{d1}/{n}").etag for n in ADAPTER_FILES} == etags
    uri2, d2 = publish_adapter(store, "adapters/", _adapter(tmp_path, b"w2"))  # a retry that trained again
    assert d2 != d1 and uri2 != uri1
    assert store.get_bytes(f"adapters/{d1}/adapter_model.safetensors") == b"w1"  # the first is untouched
    assert not store.exists(f"adapters/{d1}/README.md")


def test_fetch_verifies_the_digest(store, tmp_path):
    uri, digest = publish_adapter(store, "adapters/", _adapter(tmp_path))
    dest, got = fetch_adapter(lambda b: store, uri, tmp_path / "fetched", digest)
    assert got == digest and (dest / "adapter_model.safetensors").read_bytes() == b"w1"
    assert verify_adapter(lambda b: store, uri) == digest
    with pytest.raises(AdapterIntegrityError, match="not the registered digest"):
        verify_adapter(lambda b: store, uri, "0" * 64)
    store.put_bytes(f"adapters/{digest}/adapter_model.safetensors", b"tampered")
    with pytest.raises(AdapterIntegrityError, match="not the digest its URI names"):
        verify_adapter(lambda b: store, uri)


def test_a_deleted_adapter_says_how_to_get_out(store, tmp_path):
    uri, digest = publish_adapter(store, "adapters/", _adapter(tmp_path))
    store.delete(f"adapters/{digest}/adapter_model.safetensors")
    with pytest.raises(AdapterIntegrityError, match=r"missing .*roll back to a version whose adapter exists"):
        verify_adapter(lambda b: store, uri, digest)


def test_a_local_directory_is_verified_too(tmp_path):
    a = _adapter(tmp_path)
    assert fetch_adapter(lambda b: None, str(a), tmp_path / "x")[1] == adapter_digest(a)
    with pytest.raises(AdapterIntegrityError, match="not the registered digest"):
        fetch_adapter(lambda b: None, str(a), tmp_path / "x", "1" * 64)
