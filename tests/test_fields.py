"""Every config field has a type and a range (dtrl.fields), and every invalid value is one line.

The property test draws a field of a config, then a value that its range
rejects, and asserts ``validate()`` raises a one-line DtrlError naming the key
and the value. A field added to a config without an entry in dtrl.fields
fails here (and in validate()).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtrl.config import FinetuneConfig, ModelConfig, TrainConfig, load_config
from dtrl.errors import DtrlError
from dtrl.fields import TABLES, Field, check_memory, key_name

CONFIGS = (ModelConfig, TrainConfig, FinetuneConfig)
FIELDS = [
    (cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls) if TABLES[cls.__name__][f.name].kind != "config"
]
WRONG_TYPES = st.sampled_from(["x", True, None, [1], {"a": 1}, 1.5])


def _beyond(spec: Field) -> st.SearchStrategy:
    """Numbers the range of ``spec`` rejects: non-finite, below the low end, above the high end."""
    out = [st.sampled_from([math.nan, math.inf, -math.inf])]
    if spec.low is not None:
        out.append(st.floats(max_value=spec.low, exclude_max=not spec.low_open, allow_nan=False, allow_infinity=False))
    if spec.high is not None:
        out.append(
            st.floats(min_value=spec.high, exclude_min=not spec.high_open, allow_nan=False, allow_infinity=False)
        )
    return st.one_of(out)


def invalid(spec: Field) -> st.SearchStrategy:
    if spec.kind == "int":
        below = st.integers(max_value=int(spec.low) - 1)
        above = [st.integers(min_value=int(spec.high) + 1)] if spec.high is not None else []
        return st.one_of(below, *above, st.sampled_from(["x", True, None, 2.5, [1]]))
    if spec.kind == "real":
        return st.one_of(_beyond(spec), st.sampled_from(["x", True, [1.0]] + ([] if spec.optional else [None])))
    if spec.kind == "reals":
        n = spec.length or 1
        wrong_length = [[1.0] * (n + 1)] if spec.length else []
        return st.one_of(_beyond(spec).map(lambda v: [v] * n), st.sampled_from(["x", 3.0, ["a"] * n, *wrong_length]))
    if spec.kind == "bool":
        return st.sampled_from(["yes", 1, 0, None, 1.0])
    if spec.kind == "text":
        return st.sampled_from([3, None, 1.5, ["a"], True])
    if spec.kind == "device":
        return st.one_of(
            st.sampled_from(["gpu", "cuda:", "cuda:x", "CPU", "", 0, None]),
            st.text().filter(lambda s: s not in ("auto", "cpu", "mps") and not s.startswith("cuda")),
        )
    if spec.kind == "shape":
        return st.sampled_from([[1, 2], [0, 84, 84], [4, -1, 84], "84", [4, 84, 84.5], [1, 2, 3, 4]])
    return st.one_of(st.text().filter(lambda s: s not in spec.choices), WRONG_TYPES)


def test_every_field_of_every_config_has_a_range() -> None:
    for cls in CONFIGS:
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == set(TABLES[cls.__name__]), f"{cls.__name__}: fields and dtrl.fields' table differ"
        cls().validate()  # the defaults are valid


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_invalid_value_in_any_field_is_one_line_naming_the_key(data: st.DataObject) -> None:
    cls, name = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(invalid(TABLES[cls.__name__][name]), label="value")
    config = cls(**{name: value})
    with pytest.raises(DtrlError) as info:
        config.validate()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{key_name(config, name)}="), message


def test_invalid_model_fields_are_caught_inside_a_train_config() -> None:
    with pytest.raises(DtrlError, match=r"^model\.dropout=nan must lie in \[0, 1\)$"):
        TrainConfig(model=ModelConfig(dropout=math.nan)).validate()


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", r"seed=-1 must be an integer >= 0 \(at most 4,294,967,295\)"),
        ("weight_decay=.nan", r"weight_decay=nan must be >= 0 and finite"),
        ("reward_scale=.inf", r"reward_scale=inf must be > 0 and finite"),
        ("target_returns=[.nan]", r"target_returns=\[nan\] must be a list of finite numbers"),
        ("device=gpu", r"device='gpu' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ],
)
def test_the_issue_examples_are_one_line(override: str, message: str) -> None:
    with pytest.raises(DtrlError, match=message):
        load_config(None, [override])


def test_a_model_too_large_for_memory_is_refused_before_it_is_built() -> None:
    config = TrainConfig(model=ModelConfig(context_length=6000))
    with pytest.raises(DtrlError, match=r"model.context_length=6000.*need at least .* GiB but .* is 16.0 GiB: lower"):
        check_memory(config, available=16 * 2**30)
    check_memory(TrainConfig(), available=16 * 2**30)  # the paper's settings fit easily
