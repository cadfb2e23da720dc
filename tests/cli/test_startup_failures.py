"""A wrong environment stops ``sanic-chat`` with ONE line on stderr naming the
cause and the fix, exit status 2, no traceback and no hang (issue 13, item 3).
Every case runs the real command line in a fresh HOME."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sanic_chat.config import known_variables, unknown_variables
from tests.conftest import require_redis
from tests.server import free_port, run_server

from .support import (
    Result,
    assert_one_clear_line,
    assert_stopped_before_serving,
    listening_socket,
    redis_that_stops_answering,
    run_cli,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def serve(home: Path, *args: str, **env: str) -> Result:
    return run_cli("serve", "--port", str(free_port()), *args, home=home, env=env)


def store_command(command: str) -> tuple[str, ...]:
    """The arguments of ``command``, one of the two that open the store: ``serve`` (on
    a free port) or ``migrate``."""
    return ("serve", "--port", str(free_port())) if command == "serve" else ("migrate",)


# --------------------------------------------------------------------------- Redis


def test_unreachable_redis_is_one_line_and_an_exit(home: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    result = serve(home, SANIC_CHAT_BUS_URL=url)
    assert_stopped_before_serving(
        result,
        f"sanic-chat: cannot reach Redis at {url}: connection refused "
        "(start Redis, or fix SANIC_CHAT_BUS_URL)",
    )


def test_redis_gone_when_the_worker_starts_ends_the_process(home: Path) -> None:
    """The check passes, then Redis stops answering before the server's own
    start-up connects: it used to log a traceback and then hang for ever, the
    SQLite pool's thread keeping the process alive."""
    redis_port = urlsplit(require_redis()).port or 6379
    # the command line's check uses two connections (commands and pub/sub)
    with redis_that_stops_answering(redis_port, allowed=2) as port:
        url = f"redis://127.0.0.1:{port}/0"
        result = serve(home, SANIC_CHAT_BUS_URL=url)
    assert_one_clear_line(result, f"sanic-chat: cannot reach Redis at {url}: ")
    assert "(start Redis, or fix SANIC_CHAT_BUS_URL)" in result.stderr
    assert (home / ".local/share/sanic-chat/chat.db").is_file()  # the store was opened first


# --------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_database_in_a_missing_directory_is_named(home: Path, command: str) -> None:
    missing = home / "nonexistent" / "dir"
    args = store_command(command)
    result = run_cli(
        *args, home=home, env={"SANIC_CHAT_DATABASE_URL": f"sqlite:///{missing}/chat.db"}
    )
    assert_one_clear_line(
        result,
        f"sanic-chat: cannot open the SQLite database {missing}/chat.db: no such directory "
        f"{missing} (create {missing} or fix SANIC_CHAT_DATABASE_URL)",
    )
    assert "nothing was stored" not in result.output  # a client's message, not an operator's


def _unwritable_directory(tmp_path: Path) -> tuple[Path, str]:
    """A directory in which nothing can be created, and the OS's words for it."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked, "permission denied"
    # root writes through permissions: sysfs refuses new entries to anyone
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no directory refuses root")
    return Path("/sys/kernel"), "operation not permitted"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unwritable_data_dir_is_named(home: Path, tmp_path: Path, command: str) -> None:
    directory, why = _unwritable_directory(tmp_path)
    data_dir = directory / "sanic-chat"
    args = store_command(command)
    result = run_cli(*args, home=home, env={"SANIC_CHAT_DATA_DIR": str(data_dir)})
    assert_one_clear_line(
        result,
        f"sanic-chat: cannot create the data directory {data_dir}: {why} (set "
        "SANIC_CHAT_DATA_DIR to a directory this user can write, or fix its permissions)",
    )


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_data_dir_under_a_file_is_named(home: Path, command: str) -> None:
    (home / "a-file").write_text("")
    data_dir = home / "a-file" / "sanic-chat"
    args = store_command(command)
    result = run_cli(*args, home=home, env={"SANIC_CHAT_DATA_DIR": str(data_dir)})
    assert_one_clear_line(
        result, f"sanic-chat: cannot create the data directory {data_dir}: not a directory"
    )


def test_a_database_file_that_cannot_be_created_is_named(home: Path, tmp_path: Path) -> None:
    directory, _ = _unwritable_directory(tmp_path)
    path = directory / "chat.db"
    result = run_cli("migrate", home=home, env={"SANIC_CHAT_DATABASE_URL": f"sqlite:///{path}"})
    assert_one_clear_line(result, f"sanic-chat: cannot open the SQLite database {path}: ")
    assert "(fix SANIC_CHAT_DATABASE_URL, or the permissions of" in result.stderr


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_file_that_is_not_a_database_is_named(home: Path, command: str) -> None:
    path = home / "chat.db"
    path.write_text("this is not an SQLite database\n" * 100)
    args = store_command(command)
    result = run_cli(*args, home=home, env={"SANIC_CHAT_DATABASE_URL": f"sqlite:///{path}"})
    assert_one_clear_line(
        result, f"sanic-chat: cannot use the SQLite database {path}: file is not a database"
    )


def test_a_relative_sqlite_url_is_relative_to_the_working_directory(home: Path) -> None:
    """``sqlite:///chat.db`` once wrote /chat.db at the filesystem root."""
    work = home / "work"
    work.mkdir()
    result = run_cli(
        "migrate", home=home, cwd=work, env={"SANIC_CHAT_DATABASE_URL": "sqlite:///chat.db"}
    )
    assert result.returncode == 0, result.output
    assert (work / "chat.db").stat().st_size > 0  # the schema is in it
    assert "schema is up to date" in result.stdout


def test_a_relative_url_meant_as_absolute_says_how_to_write_it(home: Path) -> None:
    """Three slashes and an absolute path was this project's spelling once: when
    the relative reading names no directory but the absolute one does, the line
    says how to write the absolute path."""
    (home / "db").mkdir()
    written = f"{home}/db/chat.db".lstrip("/")
    result = run_cli(
        "migrate", home=home, cwd=home, env={"SANIC_CHAT_DATABASE_URL": f"sqlite:///{written}"}
    )
    assert_one_clear_line(result, f"for /{written} write sqlite:////{written}")


def test_a_server_serves_from_a_relative_sqlite_url(home: Path) -> None:
    work = home / "work"
    work.mkdir()
    previous = os.getcwd()
    os.chdir(work)  # run_server starts the server in the test's working directory
    try:
        with run_server({"SANIC_CHAT_DATABASE_URL": "sqlite:///chat.db"}) as server:
            assert (work / "chat.db").stat().st_size > 0, server.log()
    finally:
        os.chdir(previous)


# --------------------------------------------------------------------------- the port


def test_a_port_in_use_is_named_before_serving_on(home: Path) -> None:
    with listening_socket() as port:
        result = run_cli("serve", "--port", str(port), home=home)
    assert_stopped_before_serving(
        result,
        f"sanic-chat: port {port} on 127.0.0.1 is in use: stop what listens there, or choose "
        "another port with --port (or SANIC_CHAT_PORT)",
    )


def test_the_fake_llm_on_a_port_in_use_is_one_line(home: Path) -> None:
    with listening_socket() as port:
        result = run_cli("fake-llm", "--port", str(port), home=home)
    assert_one_clear_line(result, f"sanic-chat fake-llm: port {port} on 127.0.0.1 is in use: ")
    assert "--port" in result.stderr


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_below_one_are_refused(home: Path, workers: str) -> None:
    result = run_cli("serve", "--port", str(free_port()), "--workers", workers, home=home)
    assert_one_clear_line(
        result, f"error: argument --workers: {workers!r}: give a whole number of processes"
    )


def test_a_wrong_port_variable_is_refused(home: Path) -> None:
    result = run_cli("serve", home=home, env={"SANIC_CHAT_PORT": "80000"})
    assert_one_clear_line(result, "argument --port: '80000' is not a port number from 1 to 65535")


@pytest.mark.parametrize("command", ["serve", "migrate", "fake-llm"])
def test_a_wrong_log_level_is_refused(home: Path, command: str) -> None:
    result = run_cli(command, home=home, env={"SANIC_CHAT_LOG_LEVEL": "verbose"})
    assert_one_clear_line(
        result,
        "sanic-chat: configuration error: SANIC_CHAT_LOG_LEVEL='verbose' is not a log level: "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--fault", "bogus"), "argument --fault: unknown fault 'bogus'; use one of status, cut"),
        (("--fault", "status:200"), "argument --fault: fault 'status:200': give an error status"),
        (("--directives", "tps=fast"), "argument --directives: directive tps='fast' is not a"),
        (("--port", "-5"), "argument --port: '-5' is not a port number"),
    ],
)
def test_the_fake_llm_refuses_wrong_arguments(
    home: Path, args: tuple[str, ...], expected: str
) -> None:
    result = run_cli("fake-llm", *args, home=home)
    assert_one_clear_line(result, expected)


# --------------------------------------------------------------------------- unknown names


def test_a_misspelled_variable_is_named_with_the_closest_one(home: Path) -> None:
    result = run_cli(
        "migrate",
        home=home,
        env={"SANIC_CHAT_DATABSE_URL": "sqlite:////elsewhere.db", "SANIC_CHAT_COLOUR": "red"},
    )
    assert result.returncode == 0, result.output
    lines = result.stderr.splitlines()
    assert (
        "sanic-chat: warning: SANIC_CHAT_DATABSE_URL is not a sanic-chat setting and is "
        "ignored; did you mean SANIC_CHAT_DATABASE_URL?"
    ) in lines
    assert "sanic-chat: warning: SANIC_CHAT_COLOUR is not a sanic-chat setting and is ignored" in (
        lines
    )


def test_a_serving_server_warns_about_a_misspelled_variable_once() -> None:
    with run_server({"SANIC_CHAT_MAX_FRAME_BYTE": "2048"}) as server:
        log = server.log()
    assert log.count("warning: SANIC_CHAT_MAX_FRAME_BYTE is not a sanic-chat setting") == 1
    assert "did you mean SANIC_CHAT_MAX_FRAME_BYTES?" in log


def test_known_names_need_no_warning() -> None:
    env = {
        "SANIC_CHAT_DATABASE_URL": "x",
        "SANIC_CHAT_HOST": "x",
        "SANIC_CHAT_PORT": "x",
        "SANIC_CHAT_LOG_LEVEL": "x",
        "SANIC_CHAT_LOG_FORMAT": "x",
        "SANIC_CHAT_NODE_ID": "x",
        "SANIC_CHAT_JWT_AUDIENCE": "x",
        "SANIC_CHAT_TEST_REDIS_URL": "x",
        "SANIC_CHAT_TEST_ANYTHING_NEW": "x",
        "SANIC_CHAT_REQUIRE_SERVICES": "x",
        "PATH": "x",
    }
    assert unknown_variables(env) == []


_NAME = re.compile(r"\bSANIC_CHAT_[A-Z0-9_]*[A-Z0-9]\b")
#: the misspelling the docs show as an example of the warning
_EXAMPLE_MISSPELLING = "SANIC_CHAT_DATABSE_URL"


def test_every_variable_named_in_the_code_and_docs_is_known() -> None:
    """The known names come from the settings reader (plus the few read
    elsewhere): a name documented or read anywhere but missing from them would
    earn its users a false warning."""
    known = known_variables()
    places = [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("benchmarks/**/*.py")]
    places += [*REPO.glob("sanic_chat/**/*.py"), *REPO.glob("tests/**/*.py"), REPO / ".ci/run"]
    unknown: dict[str, str] = {}
    for place in places:
        if not place.is_file() or place.parent == Path(__file__).parent:
            continue  # this directory misspells names on purpose
        for name in _NAME.findall(place.read_text(errors="replace")):
            if name not in known | {_EXAMPLE_MISSPELLING} and not name.startswith(
                "SANIC_CHAT_TEST_"
            ):
                unknown.setdefault(name, str(place.relative_to(REPO)))
    assert unknown == {}


def test_the_closest_known_name_ignores_the_common_prefix() -> None:
    assert unknown_variables({"SANIC_CHAT_BUS_PREFX": "x", "SANIC_CHAT_FOO": "x"}) == [
        ("SANIC_CHAT_BUS_PREFX", "SANIC_CHAT_BUS_PREFIX"),
        ("SANIC_CHAT_FOO", None),
    ]
