"""patches/media_steps.py: the V1 runner's pruning hook runs only on steps with media rows in some request's window."""

from __future__ import annotations

import types

import pytest

pytest.importorskip("vllm")

from vllm.multimodal.inputs import PlaceholderRange

from vs_vllm.vllm_plugin.patches.media_steps import patch_media_steps, step_has_media_rows


def _request(computed: int, spans: list[tuple[int, int]]):
    features = [types.SimpleNamespace(mm_position=PlaceholderRange(offset=o, length=n)) for o, n in spans]
    return types.SimpleNamespace(num_computed_tokens=computed, mm_features=features)


def _runner(requests: dict, flag: bool = True):
    return types.SimpleNamespace(
        input_batch=types.SimpleNamespace(req_ids=list(requests)), requests=requests,
        is_multimodal_pruning_enabled=flag,
    )


def _step(scheduled: dict):
    return types.SimpleNamespace(num_scheduled_tokens=scheduled)


@pytest.mark.parametrize(
    ("computed", "scheduled", "spans", "expected"),
    [
        (0, 40, [(5, 20)], True),  # whole prompt in one step
        (30, 1, [(5, 20)], False),  # decode step after the image
        (25, 10, [(5, 20)], False),  # the text chunk right after the image (window starts at its end)
        (24, 10, [(5, 20)], True),  # ... one row earlier: the image's last row is in the window
        (0, 5, [(5, 20)], False),  # a text chunk that ends just before the image
        (0, 6, [(5, 20)], True),
        (12, 30, [(5, 4), (30, 8)], True),  # between two images, reaching the second
        (12, 10, [(5, 4), (30, 8)], False),  # between two images, reaching neither
        (0, 8, [], False),  # a text-only request
    ],
)
def test_step_has_media_rows(computed, scheduled, spans, expected):
    runner = _runner({"a": _request(computed, spans)})
    assert step_has_media_rows(runner, _step({"a": scheduled})) is expected


def test_one_request_with_media_rows_enables_the_whole_step():
    runner = _runner({"decode": _request(90, [(5, 20)]), "text": _request(0, []), "prefill": _request(0, [(3, 9)])})
    assert step_has_media_rows(runner, _step({"decode": 1, "text": 16, "prefill": 20}))
    assert not step_has_media_rows(runner, _step({"decode": 1, "text": 16, "prefill": 3}))
    # speculative decoding's look-ahead shift moves every window
    assert step_has_media_rows(runner, _step({"decode": 1, "text": 16, "prefill": 3}), shift_computed_tokens=1)


def test_wrapper_turns_the_hook_off_for_steps_without_media_and_restores_it():
    seen = []

    class Runner:
        def _gather_mm_embeddings(self, scheduler_output, shift_computed_tokens=0):
            seen.append(self.is_multimodal_pruning_enabled)
            if getattr(scheduler_output, "boom", False):
                raise RuntimeError("boom")
            return "embeds"

    module = types.SimpleNamespace(GPUModelRunner=Runner)
    assert patch_media_steps(module) and patch_media_steps(module)  # idempotent
    runner = Runner()
    runner.__dict__.update(vars(_runner({"a": _request(30, [(5, 20)])})))
    assert runner._gather_mm_embeddings(_step({"a": 1})) == "embeds"
    assert seen == [False] and runner.is_multimodal_pruning_enabled is True
    assert runner._gather_mm_embeddings(_step({"a": 1}), 0) == "embeds"
    runner.requests["a"].num_computed_tokens = 0
    assert runner._gather_mm_embeddings(_step({"a": 10})) == "embeds"
    assert seen == [False, False, True]
    runner.requests["a"].num_computed_tokens = 30
    failing = _step({"a": 1})
    failing.boom = True
    with pytest.raises(RuntimeError):
        runner._gather_mm_embeddings(failing)
    assert seen[-1] is False and runner.is_multimodal_pruning_enabled is True
    runner.is_multimodal_pruning_enabled = False  # a model without pruning: never switched on
    runner._gather_mm_embeddings(_step({"a": 1}))
    assert seen[-1] is False and runner.is_multimodal_pruning_enabled is False
