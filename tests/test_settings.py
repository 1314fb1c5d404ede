"""Tests of the settings object: environment, overrides and checks."""

from __future__ import annotations

import pytest

from recs.settings import Settings, mask_url


def test_from_env_reads_recs_variables_and_overrides_win() -> None:
    env = {"RECS_N_CLUSTERS": "7", "RECS_NO_CATEGORY_VALUES": "(no genres listed)",
           "RECS_MAX_BAD_SHARE": "0.1", "RECS_QUALITY_GATE": "false"}
    settings = Settings.from_env(env=env, top_n=5, n_clusters=None)
    assert settings.n_clusters == 7
    assert settings.no_category_values == ("(no genres listed)",)
    assert settings.max_bad_share == 0.1
    assert settings.quality_gate is False
    assert settings.top_n == 5


def test_from_env_auto_clusters() -> None:
    assert Settings.from_env(env={"RECS_N_CLUSTERS": "auto"}).n_clusters == "auto"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"progress_format": "stars"}, "progress_format must be one of"),
        ({"max_bad_share": 1.5}, "max_bad_share must be in"),
        ({"mastery_threshold": 90}, "mastery_threshold must be in"),
        ({"top_n": 0}, "top_n must be >= 1, got 0"),
        ({"n_clusters": 0}, "n_clusters must be >= 1"),
    ],
)
def test_settings_reject_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env={}, **changes)


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(TypeError, match="unknown setting 'colour'"):
        Settings.from_env(env={}, colour="blue")


def test_public_dict_masks_passwords() -> None:
    settings = Settings.from_env(
        env={}, warehouse_url="postgresql+psycopg://app:s3cret@db:5432/wh"
    )
    assert "s3cret" not in str(settings.public_dict())
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_from_env_warns_about_a_misspelt_variable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="recs.settings"):
        settings = Settings.from_env(env={"RECS_PROGRES_SCALE": "5"})
    assert settings.progress_scale == 100.0
    assert "ignoring RECS_PROGRES_SCALE" in caplog.text
    assert "did you mean RECS_PROGRESS_SCALE?" in caplog.text


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("Off", False), ("0", False)]
)
def test_from_env_reads_booleans(raw: str, value: bool) -> None:
    assert Settings.from_env(env={"RECS_QUALITY_GATE": raw}).quality_gate is value


def test_from_env_refuses_a_boolean_it_cannot_read() -> None:
    with pytest.raises(ValueError, match=r"setting quality_gate: cannot read 'ture'"):
        Settings.from_env(env={"RECS_QUALITY_GATE": "ture"})
