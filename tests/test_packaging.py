"""The installed entry points work from any folder, and no file edits the import path.

After `pip install -e .` (pyproject.toml: py-modules train, evaluate, generate and three
[project.scripts]), `minillm-train`, `minillm-evaluate`, `minillm-generate` and
`python -m train` / `-m evaluate` / `-m generate` run from any working directory. Each runs
here from a fresh temporary folder, with PYTHONPATH removed, so only the installation can
make the imports work. The bundled data file is found relative to the code (train.py's
default --data_path is an absolute path to data/sample_training.txt); outputs (--output_dir,
--checkpoint) stay relative to the working directory.

`python benchmarks/X.py` puts benchmarks/ first on sys.path, so a script there named like one
of the project's packages (a benchmarks/tokenizer.py) would hide that package from every script in
the folder; the last test keeps such names out.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["train", "evaluate", "generate"]
PATH_EDIT = re.compile(r"\bsys\.path\.(insert|append)\(")


def run_help(command, cwd):
    """`command --help` in cwd without PYTHONPATH, wide enough that argparse does not wrap."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(COLUMNS="1000", TQDM_DISABLE="1")
    result = subprocess.run([*command, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr[-2000:]}"
    assert result.stdout.startswith("usage:"), result.stdout[:500]
    return result.stdout


def console_script(name):
    """The installed script: on PATH, or beside this interpreter (a venv run without activating it)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("module", MODULES)
def test_console_script_runs_from_any_folder(module, tmp_path):
    name = f"minillm-{module}"
    script = console_script(name)
    if script is None:                  # under CI=true this skip fails the run (conftest.py)
        pytest.skip(f"{name} is not installed: pip install -e .")
    out = run_help([script], tmp_path)
    assert out.startswith(f"usage: {name} ")


@pytest.mark.parametrize("module", MODULES)
def test_python_dash_m_runs_from_any_folder(module, tmp_path):
    run_help([sys.executable, "-m", module], tmp_path)


def test_bundled_data_is_found_relative_to_the_code(tmp_path):
    out = " ".join(run_help([sys.executable, "-m", "train"], tmp_path).split())
    match = re.search(r"--data_path DATA_PATH .*?default: (\S*sample_training\.txt)\)", out)
    assert match, out
    default = Path(match.group(1))
    assert default.is_absolute() and default.is_file(), default
    assert re.search(r"--output_dir OUTPUT_DIR .*?default: output\)", out), out     # relative to the cwd


def test_no_file_edits_the_import_path():
    """Every tracked or new (not ignored) .py file: no sys.path insert/append."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e})")
    files = [ROOT / f for f in listed if (ROOT / f).is_file()]     # a file deleted but not yet staged: gone
    assert any(f.name == "train.py" for f in files)
    offenders = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
                 for f in files for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
                 if PATH_EDIT.search(line)]
    assert not offenders, "imports must work through the installation (pip install -e .):\n" + "\n".join(offenders)


def test_no_script_hides_a_package():
    """A file in a folder of runnable scripts must not be named like a package of the project."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert {"mini_llm", "tokenizer", "training"} <= packages
    hiding = [str(f.relative_to(ROOT)) for folder in ("demos", "benchmarks", "tokenizer", "training")
              for f in (ROOT / folder).glob("*.py") if f.stem in packages]
    assert not hiding, (f"{hiding}: run as `python FOLDER/SCRIPT.py`, each of these hides the package of its "
                        "name from the scripts beside it; rename it")

