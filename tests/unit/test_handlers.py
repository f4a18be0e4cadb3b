"""The kopf registrations are level-based only, which is what lets ``NoDiffBase`` keep nothing."""

from __future__ import annotations

import kopf

import studbook.controllers.handlers  # noqa: F401  (registers the handlers)


def test_no_handler_compares_old_and_new_so_no_diff_base_is_needed() -> None:
    registry = kopf.get_default_registry()
    # kopf's registries by kind of handler (kopf/_core/intents/registries.py); changing and
    # spawning handlers are the ones that read a diff base.
    names = {h.id for h in registry._watching.get_all_handlers()}
    assert {"descendant_event", "job_event", "policy_event", "suite_event"} <= names
    assert not registry._changing.get_all_handlers(), "an on.create/update/delete needs a diff base"
    assert not registry._spawning.get_all_handlers(), "a daemon or timer needs a diff base"
