"""Running the command line in this process and checking the one-line error contract."""

from __future__ import annotations

import pytest

from cityscapes_lab.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``cityscapes-lab ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def expect_error(args: list, capsys, *must_mention: str) -> str:
    """Run a command that must fail as bad input does: exit code 2 and one line ``error: ...`` on stderr, with
    no traceback and no warning, mentioning every text in ``must_mention``. Returns the line."""
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for text in must_mention:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]
