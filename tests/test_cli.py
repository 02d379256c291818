import json
import subprocess
import sys

import pytest

from snapdistill import __version__


def test_version_and_help(cli):
    code, out, _ = cli("--version")
    assert (code, out.strip()) == (0, f"snapdistill {__version__}")
    code, out, _ = cli("sample", "--help")
    assert code == 0 and "snapdistill sample --teacher toy --toy-val" in out


def test_known_error_is_one_line_and_debug_shows_traceback(tmp_path):
    args = [sys.executable, "-m", "snapdistill", "sample", "--teacher", "nope", "--prompt", "x", "--out", str(tmp_path)]
    plain = subprocess.run(args, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == ["error: unknown teacher 'nope'; known names: toy, sd15, sd21, sd21-base (or a pipeline folder / checkpoint file)"]
    debug = subprocess.run(args, capture_output=True, text=True, env={"SNAPDISTILL_DEBUG": "1", "PATH": ""})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "SnapdistillError" in debug.stderr


def test_usage_error_exit_code(cli):
    code, _, err = cli("sample", "--no-such-flag")
    assert code == 2 and "No such option" in err


@pytest.mark.parametrize("args, key, value", [
    (("build-data", "--source", "toy:16", "--resolution", "32"), "resolution", 32),
    (("sample", "--teacher", "toy", "--prompt", "a red circle", "--steps", "4"), "steps", 4),
    (("toy", "judge", "--steps", "3"), "steps", 3),
])
def test_dry_run_prints_the_resolved_config_and_writes_nothing(cli, tmp_path, args, key, value):
    out = tmp_path / "o"
    extra = () if args[0] == "toy" else ("--out", out)
    code, stdout, err = cli(*args, *extra, "--dry-run")
    assert code == 0, err
    assert json.loads(stdout)[key] == value
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_still_refuses_bad_settings(cli, tmp_path):
    code, _, err = cli("build-data", "--source", "toy:16", "--resolution", "0", "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and "--resolution must be a positive integer" in err and not (tmp_path / "o").exists()


def test_help_keeps_the_bracketed_defaults(cli):
    """Typer's rich markup would eat an unescaped "[default: ...]" in a help string (it reads as a style tag)."""
    import re

    code, out, _ = cli("distill-steps", "--help")
    flat = re.sub(r"[\s│]+", "", out)  # the help column wraps with the terminal's width
    assert code == 0 and "[default:1.5]" in flat and "[default:huber]" in flat
