"""The console script: verbs listed, --help for each, one-line errors.

Parametrised over the CLI's verb table (``tfrobust.cli.VERBS``): a new verb is tested by being listed.
"""

import argparse
import importlib
import subprocess
import sys

import pytest

from tfrobust import cli


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb, help_text in cli.VERBS.items():
        assert verb in out
        assert help_text.split()[0] in out


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: tfrobust " + verb in capsys.readouterr().out


class _Recorder(argparse.ArgumentParser):
    """A parser that keeps the (flags, settings) of every option a verb adds."""

    def __init__(self):
        self.options = []  # before super().__init__, which adds -h
        super().__init__()

    def add_argument(self, *flags, **settings):
        self.options.append((flags, settings))
        return super().add_argument(*flags, **settings)


def _options(verb):
    """The verb's own options as ``(flags, settings)``, and the values its required ones need."""
    recorder = _Recorder()
    importlib.import_module(f"tfrobust.cli.{verb}").add_arguments(recorder)
    options = [(flags, settings) for flags, settings in recorder.options if flags[0] not in ("-h", "--help")]
    required = [x for flags, settings in options if settings.get("required") for x in (flags[0], "1")]
    return options, required


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_bad_flags_exit_2_naming_the_flag(verb, capsys):
    options, required = _options(verb)
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, *required, "--no-such-flag"])
    assert exc.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    for flags, settings in options:
        if settings.get("type") in (int, float):  # a value of the wrong type is named with its flag
            flag = flags[0]
            with pytest.raises(SystemExit) as exc:
                cli.main([verb, *required, flag, "not-a-number"])
            err = capsys.readouterr().err
            assert exc.value.code == 2 and flag in err and "'not-a-number'" in err, (verb, flag, err)


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
