"""service.config: every setting comes from its RNNSERVE_ variable, checked, and is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import generator, sentiment, translator
from service.config import TABLE_END, TABLE_START, TASKS, Settings, main, markdown_table, with_table

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_without_variables():
    assert Settings.from_env({}) == Settings()
    assert Settings().sentiment_model == "sentiment-rnn:latest"
    assert Settings().max_texts == 64
    assert Settings().max_tokens == 2000
    assert Settings().access_log == "off"


def test_variables_override_with_their_types():
    settings = Settings.from_env({"RNNSERVE_TRANSLATOR_KO_MODEL": "translator-ko-en:v2",
                                  "RNNSERVE_WORKERS": "2", "RNNSERVE_MAX_WAIT_MS": "2.5",
                                  "UNRELATED": "x"})
    assert settings.translator_ko_model == "translator-ko-en:v2"
    assert settings.workers == 2
    assert settings.max_wait_ms == 2.5


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RNNSERVE_TORCH_THREADS", "two", "expected int"),
    ("RNNSERVE_MAX_BATCH_SIZE", "0", "at least 1"),
    ("RNNSERVE_MAX_WAIT_MS", "-1", "at least 0"),
    ("RNNSERVE_ACCESS_LOG", "yes", "one of on, off"),
    ("RNNSERVE_PRECISION", "int4", "one of float32, float16, bfloat16, int8"),
    ("RNNSERVE_PRECISION", "generator=int4", "one of float32, float16, bfloat16, int8"),
    ("RNNSERVE_PRECISION", "tagger=int8", "not a task: must be one of sentiment, generator, translator"),
])
def test_a_bad_value_names_the_variable(name, value, message):
    with pytest.raises(ValueError, match=f"{name}=.*{message}"):
        Settings.from_env({name: value})


def test_the_configuration_page_holds_the_generated_table():
    """docs/configuration.md's settings table is `markdown_table()`: `make docs` rewrites it."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert with_table(text) == text, "docs/configuration.md is out of date: run `make docs`"


def test_the_generated_table_lists_every_variable_with_its_default_and_limits():
    rows = {line.split("|")[1].strip(): line for line in markdown_table().splitlines()
            if line.startswith("| `RNNSERVE_")}
    assert list(rows) == [f"`{name}`" for name, _, _ in Settings.describe()]
    for name, default, help_text in Settings.describe():
        assert f"`{default}`" in rows[f"`{name}`"] and help_text in rows[f"`{name}`"], name
    assert "int >= 1" in rows["`RNNSERVE_MAX_BATCH_SIZE`"]
    assert "`on` or `off`" in rows["`RNNSERVE_ACCESS_LOG`"]


def test_updating_a_page_replaces_only_the_generated_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{TABLE_START}\nstale\n{TABLE_END}\noutro\n")
    main(["--update", str(page)])
    assert page.read_text() == f"intro\n{TABLE_START}\n{markdown_table()}{TABLE_END}\noutro\n"
    with pytest.raises(ValueError, match="settings:start"):
        with_table("no block here")


def test_precision_is_one_for_every_model_or_per_task_over_the_default():
    assert Settings().precisions == {"sentiment": "float32", "generator": "float16",
                                     "translator": "float16"}
    assert set(TASKS) == {sentiment.TASK, generator.TASK, translator.TASK}

    def precisions(value: str) -> dict[str, str]:
        return Settings.from_env({"RNNSERVE_PRECISION": value}).precisions

    assert precisions("int8") == dict.fromkeys(TASKS, "int8")
    assert precisions("generator=float32") == {"sentiment": "float32", "generator": "float32",
                                               "translator": "float16"}
    # items apply in order: every model first, then one task
    assert precisions(" bfloat16, sentiment=float16 ") == {
        "sentiment": "float16", "generator": "bfloat16", "translator": "bfloat16"}


def test_workers_default_to_the_usable_cpus_lowered_by_a_cgroup_quota(tmp_path, monkeypatch):
    from service import config

    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert config.usable_cpus(str(tmp_path)) == 4  # no cpu.max: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert config.usable_cpus(str(tmp_path)) == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert config.usable_cpus(str(tmp_path)) == 2  # 1.5 CPUs of quota: two workers
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert config.usable_cpus(str(tmp_path)) == 1
    assert Settings(workers=3).worker_count == 3


def test_a_path_group_that_does_not_exist_stops_the_server():
    with pytest.raises(ValueError, match="RNNSERVE_AUTH_PUBLIC='health,admin'.*'admin' is not a path group"):
        Settings.from_env({"RNNSERVE_AUTH_PUBLIC": "health,admin"})


def test_the_token_can_come_from_a_file_and_only_from_one_place(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret-token  \nignored second line\n")
    settings = Settings.from_env({"RNNSERVE_AUTH_TOKEN_FILE": str(secret)})
    assert settings.auth_token == "s3cret-token"
    with pytest.raises(ValueError, match="RNNSERVE_AUTH_TOKEN_FILE and RNNSERVE_AUTH_TOKEN are both set"):
        Settings.from_env({"RNNSERVE_AUTH_TOKEN_FILE": str(secret), "RNNSERVE_AUTH_TOKEN": "other"})
    with pytest.raises(ValueError, match="RNNSERVE_AUTH_TOKEN_FILE=.*cannot read it"):
        Settings.from_env({"RNNSERVE_AUTH_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="RNNSERVE_AUTH_TOKEN_FILE=.*first line is empty"):
        Settings.from_env({"RNNSERVE_AUTH_TOKEN_FILE": str(tmp_path / "empty")})
