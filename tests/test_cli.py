"""The console script: verbs listed, --help for each, one-line errors."""

import subprocess
import sys

import pytest

from tfrobust import cli


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in ("quickstart", "train", "evaluate", "export", "serve", "surface", "indicator"):
        assert verb in out


@pytest.mark.parametrize("verb", ["quickstart", "train", "evaluate", "export", "serve", "surface",
                                  "indicator"])
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: tfrobust " + verb in capsys.readouterr().out


def test_python_dash_m_and_no_verb():
    res = subprocess.run([sys.executable, "-m", "tfrobust"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "VERB" in res.stdout


@pytest.mark.parametrize("argv,needle", [
    (["quickstart", "--epochs", "0"], "--epochs=0"),
    (["quickstart", "--width", "-1"], "--width=-1"),
])
def test_quickstart_bad_input(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
