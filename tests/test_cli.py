import subprocess
import sys

import pytest

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

    assert normalise_args(["--srcs", "a,b", "--prefix-ids"], merge_datasets) == ["--srcs=[a,b]", "--prefix_ids=true"]
    assert normalise_args(["--no-prefix-ids", "--out", "x"], merge_datasets) == ["--prefix_ids=false", "--out=x"]
    # positional lists too, and option values that look like positionals are not taken for them
    assert normalise_args(["a,b", "--overwrite", "o"], merge_datasets) == ["[a,b]", "--overwrite=true", "o"]
    assert normalise_args(["--seed", "3", "a", "o"], merge_datasets) == ["--seed=3", "[a]", "o"]


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    assert main(["import-ferplus", str(src), str(tmp_path / "out")]) == 0
    assert main(["import-ferplus", str(src), str(tmp_path / "out")]) == 2  # exists: tells how to proceed
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert main(["import-ferplus", str(src), str(tmp_path / "out"), "--overwrite"]) == 0
