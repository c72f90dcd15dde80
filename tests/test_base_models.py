"""The base-model policy (`retrain.base_models.check_base_model`): allowlist, pinned revisions,
remote code; and the shipped conf's decision for its own default model."""

from __future__ import annotations

import pytest

from retrain.base_models import BaseModelRefused, check_base_model
from retrain.config import ModelsConfig, load_settings

POLICY = ModelsConfig(
    allow=["Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-*-Instruct", "/models/*"],
    revisions={"Qwen/Qwen2.5-7B-Instruct": "v1.2", "Qwen/Qwen2.5-0.5B-Instruct": "abc123"},
)


def test_allowed_ids_carry_their_pinned_revision() -> None:
    choice = check_base_model("Qwen/Qwen2.5-7B-Instruct", POLICY)
    assert (choice.name, choice.revision, choice.local, choice.trust_remote_code) == (
        "Qwen/Qwen2.5-7B-Instruct",
        "v1.2",
        False,
        False,
    )
    assert check_base_model("Qwen/Qwen2.5-0.5B-Instruct", POLICY).revision == "abc123"  # by pattern


def test_an_id_outside_the_allowlist_is_refused_naming_it() -> None:
    with pytest.raises(BaseModelRefused) as info:
        check_base_model("evil/remote-code-model", POLICY, where="DAG param base_model")
    message = str(info.value)
    assert message.startswith("DAG param base_model: base model 'evil/remote-code-model' is not allowed")
    assert "conf models.allow [Qwen/Qwen2.5-7B-Instruct, Qwen/Qwen2.5-*-Instruct, /models/*]" in message


def test_an_allowed_but_unpinned_id_is_refused() -> None:
    with pytest.raises(BaseModelRefused, match="no pinned revision in conf models.revisions"):
        check_base_model("Qwen/Qwen2.5-14B-Instruct", POLICY)  # matches the pattern, no revision


def test_local_directories_are_matched_normalised() -> None:
    choice = check_base_model("/models/tiny", POLICY)
    assert choice.local and choice.revision is None
    assert check_base_model("/models/./tiny/", POLICY).local
    with pytest.raises(BaseModelRefused, match=r"'/models/\.\./etc' \(as /etc\) is not allowed"):
        check_base_model("/models/../etc", POLICY)
    with pytest.raises(BaseModelRefused, match="is not allowed"):
        check_base_model("/tmp/somewhere", POLICY)


@pytest.mark.parametrize("name", ["", "   ", "not an id", "a/b/c", "https://example.com/model"])
def test_names_that_are_neither_a_path_nor_an_id_are_refused(name: str) -> None:
    with pytest.raises(BaseModelRefused):
        check_base_model(name, POLICY)


def test_trust_remote_code_comes_from_conf_and_is_off_by_default() -> None:
    assert ModelsConfig().trust_remote_code is False
    on = POLICY.model_copy(update={"trust_remote_code": True})
    assert check_base_model("/models/tiny", on).trust_remote_code is True


def test_shipped_conf_refuses_its_unpinned_default_and_allows_the_model_volume() -> None:
    """The shipped Qwen id has no revision (none could be looked up offline): it is refused until
    pinned, with a message saying so; the trainer's model volume is allowed."""
    settings = load_settings(environ={})
    assert settings.models.trust_remote_code is False
    assert settings.llamafactory_config()["trust_remote_code"] is False
    with pytest.raises(BaseModelRefused, match="'Qwen/Qwen2.5-7B-Instruct' is allowed but has no pinned"):
        check_base_model(settings.train.base_model, settings.models)
    assert check_base_model("/models/Qwen2.5-7B-Instruct", settings.models).local
    pinned = load_settings(environ={"RETRAIN__MODELS__REVISIONS": '{"Qwen/Qwen2.5-7B-Instruct": "v1"}'})
    assert check_base_model(pinned.train.base_model, pinned.models).revision == "v1"
