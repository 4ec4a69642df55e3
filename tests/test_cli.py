"""The `camelid` command as an installed package meets it: version, `python -m camelid`, shipped recipes
found from any folder, and a missing optional package named with the extra that brings it."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

import camelid
from camelid import cli
from camelid.config import CONFIG_DIR, ConfigError, resolve_config_path


def _run(*argv, cwd=None):
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_version_and_python_m_camelid_agree(tmp_path):
    a = _run(sys.executable, "-m", "camelid", "--version", cwd=tmp_path)
    assert a.returncode == 0 and a.stdout.strip() == f"camelid {camelid.__version__}"
    helps = [_run(sys.executable, "-m", "camelid", "--help", cwd=tmp_path),
             _run(sys.executable, "-c", "import sys; from camelid.cli import main; sys.argv[0] = 'camelid'; main()",
                  "--help", cwd=tmp_path)]
    assert helps[0].returncode == helps[1].returncode == 0
    assert helps[0].stdout == helps[1].stdout and "quickstart" in helps[0].stdout


def test_import_camelid_is_light():
    # `import camelid` must not pull in torch: `camelid --help` and `--version` stay instant
    r = _run(sys.executable, "-c", "import sys, camelid; print('torch' in sys.modules); camelid.ModelArgs; "
                                   "print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


def test_shipped_recipes_are_package_data_found_from_any_folder(tmp_path, monkeypatch):
    assert CONFIG_DIR.parent == Path(camelid.__file__).parent
    monkeypatch.chdir(tmp_path)
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    assert {"quickstart", "llama2-7b", "quickstart-sft", "quickstart-rm", "quickstart-rs", "quickstart-ppo"} <= set(names)
    for name in names:
        assert resolve_config_path(name) == (CONFIG_DIR / f"{name}.toml").resolve()
    # a recipe that inherits another shipped one loads from here too
    from camelid.config import _load_with_inherit
    assert _load_with_inherit(resolve_config_path("quickstart-gatt"))
    # a user's own file still wins by path
    own = tmp_path / "quickstart.toml"
    own.write_text("[train]\nlr = 1e-3\n")
    assert resolve_config_path("quickstart.toml") == own.resolve()
    with pytest.raises(ConfigError, match="not a shipped recipe .*llama2-7b"):
        resolve_config_path("no-such-recipe")


def test_shipped_mixture_found_from_any_folder(tmp_path, monkeypatch):
    from camelid.data.mixture import load_mixture
    monkeypatch.chdir(tmp_path)
    assert len(load_mixture("llama1-mixture").sources) == 7


def test_missing_optional_package_names_its_extra(monkeypatch, capsys):
    fake = types.ModuleType("camelid_fake_cmd")
    fake.add_arguments = lambda p: None

    def run(args):
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")

    fake.run = run
    monkeypatch.setitem(sys.modules, "camelid_fake_cmd", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("camelid_fake_cmd", "a command that needs uvicorn"))
    with pytest.raises(SystemExit) as e:
        cli.main(["fake"])
    assert e.value.code == 2
    assert "needs uvicorn, which is not installed: pip install 'camelid[serve]'" in capsys.readouterr().err


def test_missing_required_package_is_not_hidden(monkeypatch):
    # a module that is no extra is a broken install: let the traceback show it
    fake = types.ModuleType("camelid_fake_cmd")
    fake.add_arguments = lambda p: None
    fake.run = lambda args: __import__("camelid_no_such_module")
    monkeypatch.setitem(sys.modules, "camelid_fake_cmd", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("camelid_fake_cmd", "x"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["fake"])


def test_every_command_builds_its_flags_without_torch():
    # `camelid COMMAND --help` stays instant: a command module loads torch only when its command runs
    code = ("import argparse, sys\nfrom camelid.cli import COMMANDS, load_command\n"
            "for name, (target, _) in COMMANDS.items():\n"
            "    load_command(target).add_arguments(argparse.ArgumentParser(prog=name))\n"
            "print(sorted(m for m in ('torch', 'camelid.train', 'camelid.infer') if m in sys.modules))")
    r = _run(sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_commands_of_a_shared_module(monkeypatch, capsys):
    # `module:name` in COMMANDS names one Command of a module that holds several (rs and ppo, scaling and plan)
    fake = types.ModuleType("camelid_fake_cmds")
    fake.one = cli.Command(lambda p: p.add_argument("--n", type=int), lambda args: print(f"one {args.n}"))
    monkeypatch.setitem(sys.modules, "camelid_fake_cmds", fake)
    monkeypatch.setitem(cli.COMMANDS, "one", ("camelid_fake_cmds:one", "x"))
    with pytest.raises(SystemExit) as e:
        cli.main(["one", "--n", "3"])
    assert e.value.code == 0 and capsys.readouterr().out == "one 3\n"
