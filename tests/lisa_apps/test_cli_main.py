"""The `lisa` dispatcher: version, help, and that every registered command module loads."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from lisa_apps import cli


def test_version_matches_package_metadata(capsys):
    import lisa

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lisa-finetune {lisa.__version__}"


def test_version_does_not_import_torch():
    # `lisa --version` must stay instant: the dispatcher imports command modules lazily.
    code = "import sys; from lisa_apps import cli; cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_module_has_configure_and_prepare(command):
    module = importlib.import_module(f"lisa_apps.commands.{cli.COMMANDS[command][0]}")
    assert callable(module.configure) and callable(module.prepare)


def test_every_exported_name_resolves_to_its_object_even_after_its_module_loaded():
    # A submodule named like one of its functions would shadow the function on the package
    # once imported; run in a fresh interpreter so import order is the one a user sees.
    code = (
        "import importlib, diagnostics\n"
        "for module in set(diagnostics._EXPORTS.values()): importlib.import_module(module)\n"
        "bad = [n for n in diagnostics.__all__ if type(getattr(diagnostics, n)).__name__ == 'module']\n"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
