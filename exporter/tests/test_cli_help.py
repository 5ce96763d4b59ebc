from __future__ import annotations

import argparse

import pytest

from exporter.__main__ import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_subcommand_has_help() -> None:
    subs = _subcommands()
    assert {"train", "export", "calibrate", "verify", "evaluate", "select", "card",
            "make-tiles"} <= set(subs)
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in subs.items()
               for a in sp._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("cmd", ["train", "export", "calibrate", "evaluate", "select"])
def test_help_shows_defaults(cmd: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: " in out
    assert "(default: None)" not in out  # options without a default say nothing


def test_help_texts_of_named_options(capsys) -> None:
    subs = _subcommands()
    for cmd, opt in (("export", "--t-s"), ("export", "--top-k"), ("calibrate", "--target-frr"),
                     ("verify", "--tol"), ("train", "--base-channels"),
                     ("train", "--max-minutes"), ("calibrate", "--max-escapes"),
                     ("evaluate", "--sweep"), ("evaluate", "--threshold")):
        (a,) = [a for a in subs[cmd]._actions if opt in a.option_strings]
        assert len(a.help) > 15, (cmd, opt)
    build_parser().parse_args(["train", "--data", "d", "--out", "o"])  # the formatter parses
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "counted across resumes" in " ".join(capsys.readouterr().out.split())


def test_the_exporter_runs_from_any_folder(tmp_path) -> None:
    """`scripts/setup` puts the repository on the venv's path and writes `diffad-export`."""
    import subprocess
    import sys
    from pathlib import Path

    venv_bin = Path(sys.executable).parent
    module = [sys.executable, "-m", "exporter", "--help"]
    for cmd in (module, [str(venv_bin / "diffad-export"), "--help"]):
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "calibrate" in out.stdout
