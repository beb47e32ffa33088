"""The dynamic configuration: validation messages, `config set` parsing, `config edit` YAML."""

from __future__ import annotations

from typing import Any

import pytest

from pgwarden.dynamic_config import (
    apply_assignments,
    changes,
    from_yaml,
    masked,
    parse_assignment,
    parse_value,
    to_yaml,
    validate,
)
from pgwarden.errors import ConfigError
from pgwarden.model import DynamicConfig, SyncMode


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(data)
    return caught.value.lines()


def set_problems(config: DynamicConfig, *arguments: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        apply_assignments(config, [parse_assignment(a) for a in arguments])
    return caught.value.lines()


def test_an_empty_mapping_gives_the_defaults() -> None:
    assert validate({}) == DynamicConfig()


def test_every_setting_is_carried_into_the_model() -> None:
    config = validate(
        {
            "ttl": 6,
            "loop_wait": 0.5,
            "safety_margin": 2,
            "maximum_lag_on_failover": 0,
            "synchronous_mode": "strict",
            "synchronous_node_count": 2,
            "paused": True,
            "parameters": {
                "Work_Mem": "64MB",
                "hot_standby_feedback": True,
                "max_connections": 200,
            },
        }
    )

    assert config == DynamicConfig(
        ttl=6.0,
        loop_wait=0.5,
        safety_margin=2.0,
        maximum_lag_on_failover=0,
        synchronous_mode=SyncMode.STRICT,
        synchronous_node_count=2,
        paused=True,
        # Names lower-cased as PostgreSQL treats them; values as postgresql.conf text.
        parameters={"work_mem": "64MB", "hot_standby_feedback": "on", "max_connections": "200"},
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"ttl": 0}, "ttl: must be at least 2 seconds, got 0"),
        ({"ttl": "abc"}, "ttl: must be a number of seconds, got 'abc'"),
        ({"ttl": True}, "ttl: must be a number of seconds, got true"),
        ({"ttl": float("inf")}, "ttl: must be a finite number of seconds, got inf"),
        ({"loop_wait": 5}, "loop_wait: must be less than ttl (4 seconds), got 5 seconds"),
        ({"loop_wait": 0}, "loop_wait: must be greater than 0 seconds, got 0"),
        (
            {"ttl": 6, "safety_margin": 6},
            "safety_margin: must be less than ttl (6 seconds), got 6 seconds",
        ),
        (
            {"synchronous_mode": "maybe"},
            "synchronous_mode: must be one of 'off', 'on', 'strict', got 'maybe'",
        ),
        ({"synchronous_node_count": 0}, "synchronous_node_count: must be at least 1, got 0"),
        (
            {"synchronous_node_count": 1.5},
            "synchronous_node_count: must be a whole number, got 1.5",
        ),
        (
            {"maximum_lag_on_failover": -1},
            "maximum_lag_on_failover: must be at least 0 bytes, got -1",
        ),
        (
            {"maximum_lag_on_failover": "1MB"},
            "maximum_lag_on_failover: must be a whole number of bytes, got '1MB'",
        ),
        ({"paused": "yes"}, "paused: must be true or false, got 'yes'"),
        ({"ttll": 5}, "ttll: unknown key; did you mean 'ttl'?"),
        ({"pause": True}, "pause: unknown key; did you mean 'paused'?"),
        (
            {"parameters": ["work_mem"]},
            "parameters: must be a mapping of PostgreSQL setting names to values, got a list",
        ),
        (
            {"parameters": {"work mem": "1MB"}},
            "parameters.work mem: is not a valid PostgreSQL setting name",
        ),
        (
            {"parameters": {"wal_level": "minimal"}},
            "parameters.wal_level: must be 'replica' or 'logical', because standbys and WAL "
            "archiving need at least replica; got 'minimal'",
        ),
        (
            {"parameters": {"work_mem": ["1MB"]}},
            "parameters.work_mem: must be a string, a number or true/false, got a list",
        ),
    ],
)
def test_invalid_values_name_the_field_and_the_problem(data: dict[str, Any], expected: str) -> None:
    assert problems_of(data) == [expected]


def test_every_problem_is_reported_at_once() -> None:
    lines = problems_of({"ttl": 1, "synchronous_mode": "sometimes", "paused": 1})

    assert [line.split(":", 1)[0] for line in lines] == ["ttl", "synchronous_mode", "paused"]


def test_an_unknown_key_without_a_close_match_lists_the_keys() -> None:
    assert problems_of({"colour": "blue"}) == [
        "colour: unknown key; the keys here are: ttl, loop_wait, safety_margin, "
        "maximum_lag_on_failover, synchronous_mode, synchronous_node_count, paused, parameters"
    ]


@pytest.mark.parametrize(
    ("parameter", "advice"),
    [
        ("port", "use postgres.port instead"),
        ("listen_addresses", "use postgres.listen_address instead"),
        ("primary_conninfo", "cannot be set here"),
        ("synchronous_standby_names", "cannot be set here"),
        ("Archive_Command", "configure storage instead"),
        ("recovery_target_time", "cannot be set here"),
    ],
)
def test_managed_parameters_are_refused_with_advice(parameter: str, advice: str) -> None:
    lines = problems_of({"parameters": {parameter: "x"}})

    assert len(lines) == 1
    assert lines[0].startswith(f"parameters.{parameter}: is managed by pgwarden")
    assert lines[0].endswith(advice)


def test_yaml_booleans_for_synchronous_mode_mean_on_and_off() -> None:
    # YAML 1.1 reads a bare `on` as true: an operator writing `synchronous_mode: on` means on.
    assert validate({"synchronous_mode": True}).synchronous_mode is SyncMode.ON
    assert validate({"synchronous_mode": False}).synchronous_mode is SyncMode.OFF


# --- config set KEY=VALUE -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("6", 6),
        ("-3", -3),
        ("0.5", 0.5),
        ("1e3", 1000.0),
        ("true", True),
        ("False", False),
        ("null", None),
        ("on", "on"),
        ("64MB", "64MB"),
        ("'5'", "5"),
        ('"true"', "true"),
        ("", ""),
        (" strict ", "strict"),
    ],
)
def test_set_values_are_typed_as_an_operator_expects(text: str, value: object) -> None:
    parsed = parse_value(text)

    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize("argument", ["ttl", "=5", " =5"])
def test_an_argument_without_key_and_equals_sign_is_refused(argument: str) -> None:
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_assignment(argument)


def test_the_value_may_itself_contain_an_equals_sign() -> None:
    assignment = parse_assignment("parameters.search_path=a=b")

    assert (assignment.key, assignment.text) == ("parameters.search_path", "a=b")


def test_set_changes_typed_settings_and_parameters() -> None:
    before = DynamicConfig(parameters={"work_mem": "4MB"})

    after = apply_assignments(
        before,
        [
            parse_assignment(a)
            for a in (
                "ttl=6",
                "loop_wait=0.5",
                "paused=true",
                "synchronous_mode=on",
                "parameters.Work_Mem=64MB",
                "parameters.shared_buffers='1GB'",
            )
        ],
    )

    assert after == DynamicConfig(
        ttl=6.0,
        loop_wait=0.5,
        paused=True,
        synchronous_mode=SyncMode.ON,
        parameters={"work_mem": "64MB", "shared_buffers": "1GB"},
    )
    assert [str(change) for change in changes(before, after)] == [
        "ttl: 4 -> 6",
        "loop_wait: 1 -> 0.5",
        "synchronous_mode: off -> on",
        "paused: false -> true",
        "parameters.shared_buffers: (not set) -> 1GB",
        "parameters.work_mem: 4MB -> 64MB",
    ]


def test_parameter_values_are_kept_as_typed() -> None:
    # PostgreSQL parses its own values: `1e3` must not become `1000.0`.
    after = apply_assignments(DynamicConfig(), [parse_assignment("parameters.work_mem=1e3")])

    assert after.parameters == {"work_mem": "1e3"}


def test_null_restores_the_default_and_removes_a_parameter() -> None:
    before = DynamicConfig(ttl=8.0, parameters={"work_mem": "64MB", "jit": "off"})

    after = apply_assignments(
        before, [parse_assignment("ttl=null"), parse_assignment("parameters.WORK_MEM=null")]
    )

    assert after == DynamicConfig(parameters={"jit": "off"})


def test_set_values_are_checked_with_the_rest_of_the_configuration() -> None:
    # loop_wait=3 is fine alone, not with the stored ttl of 3.
    assert set_problems(DynamicConfig(ttl=3.0), "loop_wait=3") == [
        "loop_wait: must be less than ttl (3 seconds), got 3 seconds"
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("ttl=0",), ["ttl: must be at least 2 seconds, got 0"]),
        (("ttl=ten",), ["ttl: must be a number of seconds, got 'ten'"]),
        (("paused=on",), ["paused: must be true or false, got 'on'"]),
        (
            ("synchronous_mode=maybe",),
            ["synchronous_mode: must be one of 'off', 'on', 'strict', got 'maybe'"],
        ),
        (
            ("synchronous_node_count=two",),
            ["synchronous_node_count: must be a whole number, got 'two'"],
        ),
        (("loop_wait=5",), ["loop_wait: must be less than ttl (4 seconds), got 5 seconds"]),
        (("lop_wait=0.5",), ["lop_wait: unknown key; did you mean 'loop_wait'?"]),
        (
            ("parameters.port=5433",),
            ["parameters.port: is managed by pgwarden; use postgres.port instead"],
        ),
        (
            ("parameters.archive_mode=off",),
            [
                "parameters.archive_mode: is managed by pgwarden, which ships WAL to the "
                "configured storage; configure storage instead"
            ],
        ),
        (
            ("parameters=work_mem",),
            ["parameters: set one PostgreSQL setting at a time: parameters.NAME=VALUE"],
        ),
        (("ttl.seconds=5",), ["ttl.seconds: ttl is a single value; set it as ttl=VALUE"]),
        (("ttl=5", "TTL=6"), ["TTL: is given twice"]),
        (
            ("ttl=1", "parameters.port=1", "paused=maybe"),
            [
                "ttl: must be at least 2 seconds, got 1",
                "paused: must be true or false, got 'maybe'",
                "parameters.port: is managed by pgwarden; use postgres.port instead",
            ],
        ),
    ],
)
def test_invalid_set_arguments_are_refused_with_every_problem(
    arguments: tuple[str, ...], expected: list[str]
) -> None:
    assert set_problems(DynamicConfig(), *arguments) == expected


# --- config edit -----------------------------------------------------------------------------


def test_the_edited_text_reads_back_as_the_same_configuration() -> None:
    config = DynamicConfig(
        ttl=6.0,
        loop_wait=0.5,
        synchronous_mode=SyncMode.ON,
        paused=True,
        parameters={"work_mem": "64MB", "jit": "off"},
    )

    text = to_yaml(config, "cluster main\nsave to write")

    assert text.startswith("# cluster main\n# save to write\n")
    assert "ttl: 6\n" in text
    assert from_yaml(text) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the edited configuration is empty"),
        ("# only a comment\n", "the edited configuration is empty"),
        ("- ttl\n", "the edited configuration must be a mapping of settings, got a list"),
        (
            "ttl: 5\nttl: 6\n",
            "the edited configuration, line 2, column 1: invalid YAML: key 'ttl' is given twice",
        ),
        ("ttl: [\n", "the edited configuration, line 2, column 1: invalid YAML: "),
    ],
)
def test_unusable_edits_are_refused(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_yaml(text)

    assert caught.value.lines()[0].startswith(expected)


def test_a_parameters_section_emptied_in_the_editor_means_no_parameters() -> None:
    assert from_yaml("ttl: 4\nparameters:\n").parameters == {}


def test_secret_parameters_are_masked_for_display_and_in_changes() -> None:
    before = DynamicConfig(parameters={"ssl_key_passphrase_command_x": "a"})
    after = DynamicConfig(parameters={"ssl_key_passphrase_command_x": "b"})

    assert masked(after)["parameters"] == {"ssl_key_passphrase_command_x": "********"}
    assert [str(c) for c in changes(before, after)] == [
        "parameters.ssl_key_passphrase_command_x: ******** -> ********"
    ]
