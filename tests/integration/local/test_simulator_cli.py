"""`totesys-etl seed` / `simulate` as a user runs them: exit codes and messages, never a
password."""

from __future__ import annotations

import json
import socket

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import AuthenticationError, SourceUnavailableError
from pipeline.local import cli
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import simulate

pytestmark = pytest.mark.postgres
WRONG_PASSWORD = "not-the-Password-42"


def _with(dsn: str, **changes: str) -> str:
    params = conninfo_to_dict(dsn)
    params.update(changes)
    return make_conninfo(**params)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_seed_then_simulate_through_the_cli(pg_dsn: str, capsys) -> None:
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.02", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["sales_order"] == 224 and counts["staff"] == 20
    assert cli.main(["simulate", "--dsn", pg_dsn, "--days", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("simulated:") and "sales_orders" in out


def _indexes(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%_last_updated_%'"
            )
        }


def test_seed_adds_cursor_indexes_only_when_asked(make_database, capsys) -> None:
    plain, indexed = make_database("plain"), make_database("indexed")
    assert cli.main(["seed", "--dsn", plain, "--scale", "0.01"]) == 0
    assert cli.main(["seed", "--dsn", indexed, "--scale", "0.01", "--cursor-indexes"]) == 0
    assert _indexes(plain) == set()
    assert "payment_last_updated_payment_id_idx" in _indexes(indexed)
    assert len(_indexes(indexed)) == 11


def test_into_existing_needs_the_tables_and_refuses_filled_ones(pg_dsn: str, capsys) -> None:
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01", "--into-existing"]) == 2
    assert "NotSeededError" in capsys.readouterr().err
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01"]) == 0
    capsys.readouterr()
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01", "--into-existing"]) == 2
    err = capsys.readouterr().err
    assert "AlreadySeededError" in err and "empty tables" in err


def test_negative_scale_is_rejected_with_a_message(pg_dsn: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["seed", "--dsn", pg_dsn, "--scale", "-2"])
    assert exit_.value.code == 2
    assert "--scale must be greater than 0" in capsys.readouterr().err


def test_already_seeded_needs_force(pg_dsn: str, capsys) -> None:
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01"]) == 0
    capsys.readouterr()
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("totesys-etl seed: AlreadySeededError:") and "--force" in err
    assert cli.main(["seed", "--dsn", pg_dsn, "--scale", "0.01", "--force", "--seed", "3"]) == 0


def test_wrong_password_is_an_authentication_error_without_the_password(
    pg_dsn: str, capsys
) -> None:
    bad = _with(pg_dsn, password=WRONG_PASSWORD)
    with pytest.raises(AuthenticationError) as error:
        seed(bad, scale=0.01)
    assert WRONG_PASSWORD not in str(error.value)
    assert cli.main(["seed", "--dsn", bad, "--scale", "0.01"]) == 2
    captured = capsys.readouterr()
    assert "AuthenticationError" in captured.err
    assert WRONG_PASSWORD not in captured.err + captured.out
    assert cli.main(["simulate", "--dsn", bad, "--days", "1"]) == 2
    assert WRONG_PASSWORD not in capsys.readouterr().err


def test_unreachable_server_is_source_unavailable(pg_dsn: str, capsys) -> None:
    down = _with(pg_dsn, port=str(_closed_port()), password=WRONG_PASSWORD)
    with pytest.raises(SourceUnavailableError, match="unreachable"):
        seed(down, scale=0.01)
    with pytest.raises(SourceUnavailableError):
        simulate(down, days=1)
    assert cli.main(["seed", "--dsn", down]) == 2
    err = capsys.readouterr().err
    assert "SourceUnavailableError" in err and WRONG_PASSWORD not in err


def test_simulate_errors_are_typed_and_exit_2(pg_dsn: str, capsys) -> None:
    assert cli.main(["simulate", "--dsn", pg_dsn, "--days", "2"]) == 2
    assert "NotSeededError" in capsys.readouterr().err
    assert cli.main(["simulate", "--dsn", pg_dsn, "--days", "0"]) == 2
    assert "SimulatorInputError" in capsys.readouterr().err


def test_seed_start_option_moves_the_history(pg_dsn: str, capsys) -> None:
    args = ["seed", "--dsn", pg_dsn, "--scale", "0.01", "--start", "2030-01-07T09:00"]
    assert cli.main(args) == 0
    with psycopg.connect(pg_dsn) as conn:
        first = conn.execute("SELECT min(created_at) FROM sales_order").fetchone()
    assert first is not None and first[0].year == 2030
    with pytest.raises(SystemExit):
        cli.main(["seed", "--dsn", pg_dsn, "--start", "next tuesday"])
    assert "ISO date" in capsys.readouterr().err
