import subprocess
import sys

import pytest
import yaml

from conftest import write_ferplus_fixture
from synfer.cli import COMMANDS, main
from synfer.core.dataset import DatasetFolder

ROWS = {"FER2013Train": [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]],
        "FER2013Test": [[0, 0, 10, 0, 0, 0, 0, 0, 0, 0]]}


@pytest.mark.parametrize("verb", list(COMMANDS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert f"synfer {verb}" in capsys.readouterr().out


def test_top_level_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in COMMANDS) and "unavailable" not in out


def test_unknown_verb_suggests(capsys):
    assert main(["imprt-ferplus"]) == 2
    assert "import-ferplus" in capsys.readouterr().err


def test_import_and_info_through_console_script(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "synfer", "import-ferplus", str(src), str(out), "--skip-bad",
                        "--splits", "train,test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(DatasetFolder(out)) == 3
    info = subprocess.run([sys.executable, "-m", "synfer", "info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "neutral" in info.stdout and "3" in info.stdout


def test_list_options_take_commas(tmp_path):
    from synfer._cli_util import normalise_args
    from synfer.core.ops import merge_datasets

    assert normalise_args(["--srcs", "a,b", "--prefix-ids"], merge_datasets) == ["[a,b]", "--prefix_ids=true"]
    assert normalise_args(["--no-prefix-ids", "--out", "x"], merge_datasets) == ["x", "--prefix_ids=false"]
    # positional lists too, and option values that look like positionals are not taken for them
    assert normalise_args(["a,b", "--overwrite", "o"], merge_datasets) == ["[a,b]", "o", "--overwrite=true"]
    assert normalise_args(["--seed", "3", "a", "o"], merge_datasets) == ["[a]", "o", "--seed=3"]
    assert normalise_args(["a", "b", "c", "o"], merge_datasets) == ["[a,b,c]", "o"]  # synfer merge A B C OUT


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    assert main(["import-ferplus", str(src), str(tmp_path / "out")]) == 0
    assert main(["import-ferplus", str(src), str(tmp_path / "out")]) == 2  # exists: tells how to proceed
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert main(["import-ferplus", str(src), str(tmp_path / "out"), "--overwrite"]) == 0


@pytest.mark.parametrize("verb", list(COMMANDS))
def test_every_option_has_help_text(verb):
    """Every parameter of every verb is documented in its function's Args (shared ``a, b: text`` entries count
    for each name), so `synfer VERB --help` explains every option."""
    import inspect

    import docstring_parser

    from synfer._cli_util import cli_function, resolve

    fn = cli_function(resolve(COMMANDS[verb]))
    documented = {p.arg_name for p in docstring_parser.parse(fn.__doc__ or "").params if p.description}
    assert [n for n in inspect.signature(fn).parameters if n not in documented] == []


def test_bare_synfer_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage: synfer VERB" in capsys.readouterr().err


def test_print_config_with_dashes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-fer", "a", "b", "--print-config"])
    assert e.value.code == 0 and "  epochs: 30" in capsys.readouterr().out


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import synfer.core.report as report

    monkeypatch.delenv("SYNFER_DEBUG", raising=False)
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    assert main(["import-ferplus", str(src), str(tmp_path / "out")]) == 0

    def broken(path: str) -> str:
        """A verb with a bug.

        Args:
            path: a folder.
        """
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "info", broken)
    assert main(["info", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "unexpected error (RuntimeError: boom)" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["info", str(tmp_path / "out"), "--debug"])
    (tmp_path / "out" / "dataset.json").write_text("{not json")
    monkeypatch.undo()
    assert main(["info", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "Traceback" not in err


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `synfer VERB ...` line in the README's and docs' bash blocks: (where, argv) with continuations
    joined and comments dropped."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        blocks, fence = [], None  # the bodies of ``` blocks whose language is bash, sh or none
        for line in doc.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fence = None if fence is not None else line.strip()[3:]
                if fence in ("bash", "sh", ""):
                    blocks.append("")
            elif fence in ("bash", "sh", ""):
                blocks[-1] += line + "\n"
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if len(argv) > 1 and argv[0] == "synfer" and argv[1] in COMMANDS:
                    found.append((f"{doc.name}: {line.strip()[:60]}", argv[1:]))
    return found


@pytest.mark.parametrize("where,argv", documented_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_commands_parse(where, argv, monkeypatch):
    """The README's and docs' command lines are accepted by the CLI's parser as written (not run)."""
    from pathlib import Path

    from jsonargparse import ActionConfigFile, ArgumentParser

    from synfer._cli_util import cli_function, normalise_args, resolve

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # --config paths are relative to the checkout
    fn = cli_function(resolve(COMMANDS[argv[0]]))
    parser = ArgumentParser(prog=f"synfer {argv[0]}", exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(fn, as_positional=True)
    parser.parse_args(normalise_args(argv[1:], fn))


def test_repeated_option_groups_are_one_dataclass_each():
    """The 7 training verbs share RunOptions and Schedule, the 4 sampling verbs SamplerOptions, the 5 importers
    ImportOptions: same fields, same defaults (a verb's schedule defaults are its own)."""
    import inspect

    from synfer._cli_util import resolve
    from synfer.core.options import ImportOptions, RunOptions, SamplerOptions, Schedule, option_groups

    training = [v for v in COMMANDS if v.startswith("train-") or v == "distill"]
    groups = {v: option_groups(resolve(COMMANDS[v])) for v in COMMANDS}
    assert len(training) == 7
    assert {v for v, g in groups.items() if g.get("run") is RunOptions} == set(training)
    assert {v for v, g in groups.items() if g.get("schedule") is Schedule} == set(training)
    assert {v for v, g in groups.items() if g.get("sampling") is SamplerOptions} == {
        "generate", "edit", "sample-grid", "au-sweep"}
    assert {v for v, g in groups.items() if g.get("importing") is ImportOptions} == {
        v for v in COMMANDS if v.startswith("import-")}
    for verb in training:
        params = inspect.signature(resolve(COMMANDS[verb])).parameters
        assert params["run"].default == RunOptions(), verb
        assert not {"seed", "epochs", "lr", "resume", "report_to"} & set(params), verb  # no flat duplicates


def test_group_fields_take_their_plain_flags(tmp_path, capsys):
    """``--seed 3 --epochs 2 --no-resume --report-to none`` land in the groups, as ``--run.seed 3`` does."""
    from synfer._cli_util import normalise_args, resolve

    fn = resolve(COMMANDS["train-fer"])
    plain = normalise_args(["d", "o", "--seed", "3", "--epochs=2", "--resume", "--no-overwrite", "--report-to",
                            "none", "--batch-size", "16"], fn)
    assert plain == ["[d]", "o", "--run.seed=3", "--schedule.epochs=2", "--run.resume=true", "--run.overwrite=false",
                     "--run.report_to=none", "--schedule.batch_size=16"]
    assert normalise_args(["d", "o", "--run.seed", "3"], fn) == ["[d]", "o", "--run.seed=3"]
    config = tmp_path / "config.yaml"  # a config file sets a group partly; the verb's defaults fill the rest
    config.write_text("schedule: {epochs: 7}\nrun: {seed: 2}\n")
    with pytest.raises(SystemExit) as e:
        main(["train-fer", "d", "o", "--config", str(config), "--seed", "3", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert e.value.code == 0
    assert printed["schedule"] == {"epochs": 7, "batch_size": 128, "lr": 0.1} and printed["run"]["seed"] == 3


def test_bind_gathers_flat_options_into_the_verbs_groups() -> None:
    from synfer.classifiers.train import train_fer
    from synfer.core.options import RunOptions, Schedule, bind

    kw = bind(train_fer, {"epochs": 5, "seed": 2, "augment": "none", "resume": True})
    assert kw == {"augment": "none", "schedule": Schedule(5, 128, 0.1), "run": RunOptions(seed=2, resume=True)}
    given = bind(train_fer, {"schedule": Schedule(3, 16, 0.5), "lr": 0.25})  # a group given whole, then a field
    assert given["schedule"] == Schedule(3, 16, 0.25)
    with pytest.raises(ValueError, match="train_fer has no option 'epoch'"):
        bind(train_fer, {"epoch": 5})
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        bind(train_fer, {"epochs": 0})
