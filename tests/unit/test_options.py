"""Per-request selection options: video_retention_ratio parsing, ratio_for, environment defaults, splitting."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vs_vllm.vllm_plugin.options import (
    ENV_VIDEO_RATIO,
    OPTION_NAMES,
    VIDEO_RATIO,
    OptionError,
    SelectionOptions,
    default_options,
    parse_options,
    split_options,
)

VALID_RATIOS = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False) | st.just(1)

NOT_A_RATIO = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),  # zero and below, -inf included
    st.floats(min_value=1.0, exclude_min=True),  # above one, +inf included
    st.just(math.nan),
    st.integers().filter(lambda i: i != 1),
    st.booleans(),
    st.none(),
    st.text(),
    st.lists(st.floats(0.1, 1.0), max_size=2),
    st.dictionaries(st.text(max_size=3), st.floats(0.1, 1.0), max_size=1),
)


@given(video=VALID_RATIOS, ratio=VALID_RATIOS)
def test_every_ratio_in_the_unit_interval_is_accepted_for_videos(video: float, ratio: float) -> None:
    options = parse_options({VIDEO_RATIO: video, "retention_ratio": ratio})
    assert options.video_retention_ratio == float(video)
    assert isinstance(options.video_retention_ratio, float)  # int 1 -> 1.0: one cache key per ratio
    assert options.ratio_for("video") == float(video)
    assert options.ratio_for("image") == float(ratio)


@given(bad=NOT_A_RATIO)
def test_anything_else_is_an_option_error_naming_the_field(bad: object) -> None:
    with pytest.raises(OptionError) as info:
        parse_options({VIDEO_RATIO: bad, "retention_ratio": 0.5})
    assert info.value.param == VIDEO_RATIO
    assert VIDEO_RATIO in str(info.value)


def test_unset_video_ratio_falls_back_to_retention_ratio() -> None:
    options = parse_options({"retention_ratio": 0.4})
    assert options.video_retention_ratio is None
    assert options.ratio_for("video") == options.ratio_for("image") == 0.4
    assert SelectionOptions().ratio_for("video") == 1.0


def test_request_fields_layer_over_server_defaults_one_by_one() -> None:
    server = SelectionOptions(retention_ratio=0.5, video_retention_ratio=0.2)
    # Only retention_ratio in the request: videos keep the server's own video ratio.
    options = parse_options({"retention_ratio": 0.9}, server)
    assert (options.ratio_for("image"), options.ratio_for("video")) == (0.9, 0.2)
    options = parse_options({VIDEO_RATIO: 0.7}, server)
    assert (options.ratio_for("image"), options.ratio_for("video")) == (0.5, 0.7)


def test_ratio_for_other_modalities_is_retention_ratio() -> None:
    options = SelectionOptions(retention_ratio=0.3, video_retention_ratio=0.1)
    assert options.ratio_for("image") == 0.3
    assert options.ratio_for("audio") == 0.3
    assert options.ratio_for("video") == 0.1


def test_fractions_are_numbers_too() -> None:
    assert parse_options({VIDEO_RATIO: Fraction(1, 4)}).video_retention_ratio == 0.25


def test_environment_default() -> None:
    assert default_options({}).video_retention_ratio is None
    assert default_options({ENV_VIDEO_RATIO: ""}).video_retention_ratio is None
    options = default_options({ENV_VIDEO_RATIO: "0.25", "VS_VLLM_RETENTION_RATIO": "0.5"})
    assert (options.ratio_for("image"), options.ratio_for("video")) == (0.5, 0.25)
    for bad in ("0", "1.5", "nan", "inf", "x"):
        with pytest.raises(ValueError, match=ENV_VIDEO_RATIO):
            default_options({ENV_VIDEO_RATIO: bad})


def test_the_option_name_is_split_off_for_the_processor() -> None:
    assert VIDEO_RATIO == "video_retention_ratio" and VIDEO_RATIO in OPTION_NAMES
    ours, rest = split_options({VIDEO_RATIO: 0.2, "retention_ratio": 0.5, "max_pixels": 1})
    assert ours == {VIDEO_RATIO: 0.2, "retention_ratio": 0.5}
    assert rest == {"max_pixels": 1}
