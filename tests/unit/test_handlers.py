"""The kopf registrations: level-based only, which lets ``NoDiffBase`` keep nothing, and
run in kopf's event loop."""

from __future__ import annotations

import inspect

import kopf

from studbook.controllers import handlers  # importing it registers the handlers


def test_no_handler_compares_old_and_new_so_no_diff_base_is_needed() -> None:
    registry = kopf.get_default_registry()
    # kopf's registries by kind of handler (kopf/_core/intents/registries.py); changing and
    # spawning handlers are the ones that read a diff base.
    names = {h.id for h in registry._watching.get_all_handlers()}
    assert {"descendant_event", "job_event", "policy_event", "suite_event"} <= names
    assert not registry._changing.get_all_handlers(), "an on.create/update/delete needs a diff base"
    assert not registry._spawning.get_all_handlers(), "a daemon or timer needs a diff base"


def test_indexes_and_event_handlers_run_in_the_event_loop() -> None:
    # kopf runs a plain function in its thread pool, where reconciles wait on the API server:
    # each watch event would first wait for a free thread.
    for handler in (
        handlers.policy_index,
        handlers.suite_index,
        handlers.descendant_index,
        handlers.job_index,
        handlers.descendant_event,
        handlers.job_event,
    ):
        assert inspect.iscoroutinefunction(handler), handler.__name__
