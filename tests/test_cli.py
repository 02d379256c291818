import subprocess
import sys

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
