"""Hostile input and faults: every mistake one `error:` line, exit code 2, nothing lost.

For train.py, evaluate.py, generate.py, checkpoints and the tokenizer. Each case asserts the
exit code, that the error is one line starting `error:` naming the flag, file or field, and
that no file was lost or half-written. The runs are tiny (a width-16, 1-layer student on ~3 KB
of text), so each case takes a second or so. The SIGKILL test kills a real run at every
file-replacing instant of one checkpoint save, resumes it, and compares the result with an
uninterrupted run bit for bit.
"""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as evaluate_cli
import generate as generate_cli
import train as cli
from mini_llm import backend
from mini_llm.checkpoint import CheckpointError
from mini_llm.model.transformer import MiniTransformer
from mini_llm.optim import AdamW
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import load_texts
from training.run_checkpoint import newest_complete, siblings
from training.teacher_specs import parse_teacher_spec
from tests.errors import assert_one_error
from tests.test_train_cli import assert_same_arrays, saved_arrays

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_training.txt"
SIZE = ["--vocab_size", "300", "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2",
        "--intermediate_size", "32", "--max_seq_length", "16", "--batch_size", "4",
        "--mock_teacher_steps", "3", "--eval_every", "3", "--sample_tokens", "5"]


def tiny(data, out, *extra, steps=4):
    return ["--data_path", str(data), "--output_dir", str(out), *SIZE, "--max_steps", str(steps),
            *map(str, extra)]


def call(main, argv):
    """(exit code, stdout, stderr) of an entry point's main(argv), run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, argv)))
        except SystemExit as e:                      # argparse (--help, usage mistakes)
            code = e.code
    return code, out.getvalue(), err.getvalue()


def error_line(err):
    """The one `error:` line of stderr (progress bars aside); fails on a traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(folder):
    """{relative path: bytes} of every file under folder: to prove nothing changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def step_of(out):
    return newest_complete(Path(out) / "checkpoint")[1]


def logged_steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]




def without_timing(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "ms"} for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text("\n\n".join(SAMPLE.read_text(encoding="utf-8").split("\n\n")[:6]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 4-step run (plain training): its output folder."""
    out = tmp_path_factory.mktemp("finished")
    assert call(cli.main, tiny(data, out))[0] == 0
    return out


@pytest.fixture(scope="module")
def straight6(data, tmp_path_factory):
    """6 steps without interruption, saving every 2: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight6")
    assert call(cli.main, tiny(data, out, "--save_every", 2, steps=6))[0] == 0
    return out


# ============================================================================= 1. nothing lost

def test_a_second_run_into_a_finished_run_is_refused(data, finished):
    before = snapshot(finished)
    line = assert_one_error(call(cli.main, tiny(data, finished)), "--resume", "--overwrite", finished)
    assert "step 4" in line
    assert snapshot(finished) == before                # metrics and checkpoint untouched


def test_overwrite_starts_over(data, tmp_path):
    assert call(cli.main, tiny(data, tmp_path, steps=4))[0] == 0
    code, printed, _ = call(cli.main, tiny(data, tmp_path, "--overwrite", steps=2))
    assert code == 0 and "--overwrite: starting over" in printed
    assert logged_steps(tmp_path) == [1, 2] and step_of(tmp_path) == 2


def crash_between_the_renames(out):
    """The state a save killed between its two renames leaves: checkpoint.old (the previous
    save) and checkpoint.tmp (the new one, complete), no checkpoint/."""
    ckpt, tmp, old = siblings(Path(out) / "checkpoint")
    os.replace(ckpt, old)
    import shutil
    shutil.copytree(old, tmp)


def test_a_save_cut_between_its_renames_resumes_and_loads(data, finished, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    crash_between_the_renames(out)
    assert not (out / "checkpoint").exists()
    code, stdout, _ = call(evaluate_cli.main, ["--checkpoint", out / "checkpoint", "--data_path", data])
    assert code == 0 and "perplexity" in stdout        # evaluate.py finds the complete copy
    assert call(generate_cli.main, ["--checkpoint", out / "checkpoint", "--max_new_tokens", 2])[0] == 0
    code, printed, _ = call(cli.main, tiny(data, out, "--resume", steps=6))
    assert code == 0 and "resuming at step 4 of 6" in printed
    assert step_of(out) == 6 and not (out / "checkpoint.old").exists()


def test_a_failing_save_after_a_cut_one_keeps_the_newest_copy(finished, tmp_path, monkeypatch):
    """save_run itself first puts the newest complete copy back in place: a save that then
    fails (full disk) still leaves the step-4 copy, not only the older one."""
    import shutil
    import training.run_checkpoint as rc
    from training.loop import make_optimizer
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    crash_between_the_renames(out)
    ckpt = out / "checkpoint"
    student = MiniTransformer.from_pretrained(out / "checkpoint.tmp")
    tokenizer = BPETokenizer.load(out / "checkpoint.tmp" / "tokenizer.json")

    def full_disk(path, *args):
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(rc, "save_training_state", full_disk)
    with pytest.raises(OSError, match="step 4 .* is intact"):
        rc.save_run(ckpt, student, make_optimizer(student), {}, tokenizer, 5, {})
    assert newest_complete(ckpt) == (ckpt, 4)


def test_a_fresh_run_never_deletes_the_only_complete_copy(data, finished, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    os.replace(out / "checkpoint", out / "checkpoint.old")   # only the .old copy is left
    before = snapshot(out)
    assert_one_error(call(cli.main, tiny(data, out)), "--resume")
    assert snapshot(out) == before


def test_resume_finds_no_checkpoint_in_one_line(data, tmp_path):
    assert_one_error(call(cli.main, tiny(data, tmp_path, "--resume")), "checkpoint")


def test_an_empty_mock_fingerprint_is_rebuilt_with_a_notice(data, tmp_path):
    assert call(cli.main, tiny(data, tmp_path, "--use_mock", steps=1))[0] == 0
    (tmp_path / "mock_teacher" / "fingerprint.json").write_text("")
    code, printed, _ = call(cli.main, tiny(data, tmp_path, "--use_mock", "--overwrite", steps=1))
    assert code == 0
    assert "fingerprint.json is unreadable" in printed and "mock teacher: training" in printed
    json.loads((tmp_path / "mock_teacher" / "fingerprint.json").read_text())
    assert not (tmp_path / "mock_teacher.tmp").exists()


def test_files_get_ordinary_modes(finished):
    mask = os.umask(0)
    os.umask(mask)
    for path in [*(finished / "checkpoint").iterdir(), finished / "metrics.jsonl", finished / "tokenizer.json"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def signal_student_at(monkeypatch, step, signals):
    """During the student's `step`-th update, send each of `signals` to this process."""
    real_train = cli.train

    def train(student, optimizer, *args, desc="train", **kwargs):
        if desc == "student":
            count = [0]

            def one_step(params, grads, lr=None):
                count[0] += 1
                if count[0] == step:
                    for s in signals:
                        signal.raise_signal(s)
                return AdamW.step(optimizer, params, grads, lr)
            optimizer.step = one_step
        return real_train(student, optimizer, *args, desc=desc, **kwargs)
    monkeypatch.setattr(cli, "train", train)


def test_sigterm_saves_like_ctrl_c(data, tmp_path, monkeypatch):
    signal_student_at(monkeypatch, 2, [signal.SIGTERM])
    code, printed, _ = call(cli.main, tiny(data, tmp_path))
    assert code == 143 and "checkpoint of step 2 saved" in printed
    assert step_of(tmp_path) == 2 and logged_steps(tmp_path) == [1, 2]


def test_a_second_ctrl_c_quits_at_once_and_says_what_is_kept(data, tmp_path, monkeypatch):
    signal_student_at(monkeypatch, 3, [signal.SIGINT, signal.SIGINT])
    code, _, err = call(cli.main, tiny(data, tmp_path, "--save_every", 2))
    assert code == 130
    assert "checkpoint of step 2" in err and "intact" in err and "nothing saved" not in err
    assert step_of(tmp_path) == 2


# ============================================================================= 9. metrics once

def test_resume_drops_the_steps_logged_after_the_checkpoint(data, straight6, tmp_path):
    """A run killed after step 3 logged steps 1..3 but saved at 2: --resume keeps 1..2."""
    assert call(cli.main, tiny(data, tmp_path, "--save_every", 2, steps=2))[0] == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "total": 0.0}) + "\n" + '{"step": 4, "tot')   # cut short
    code, _, _ = call(cli.main, tiny(data, tmp_path, "--save_every", 2, "--resume", steps=6))
    assert code == 0 and logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert without_timing(tmp_path)[2:] == without_timing(straight6)[2:]   # (step 2 ended that run)


# ============================================================================= 3. --resume

def test_resume_alone_restores_the_run_arguments(data, straight6, tmp_path):
    assert call(cli.main, tiny(data, tmp_path, "--save_every", 2, steps=3))[0] == 0
    code, printed, _ = call(cli.main, ["--output_dir", tmp_path, "--resume", "--max_steps", 6])
    assert code == 0, printed
    assert "the cosine schedule now ends at step 6" in printed       # the consequence, said
    assert_same_arrays(saved_arrays(straight6), saved_arrays(tmp_path))


def test_resume_refuses_a_contradicting_flag(data, finished):
    before = snapshot(finished)
    assert_one_error(call(cli.main, ["--output_dir", finished, "--resume", "--hidden_size", 32]),
                     "--hidden_size", "16")
    assert snapshot(finished) == before


def test_tokenizer_path_with_another_vocab_size_is_refused(data, finished, tmp_path):
    assert_one_error(call(cli.main, tiny(data, tmp_path, "--tokenizer_path",
                                         finished / "checkpoint" / "tokenizer.json", "--vocab_size", 500)),
                     "--vocab_size", "300")


# ============================================================================= 2. arguments

TRAIN_FLAGS = {
    "learning rate 0": (["--learning_rate", 0], "--learning_rate"),
    "max_steps 0": (["--max_steps", 0], "--max_steps"),
    "grad_clip negative": (["--grad_clip", -1], "--grad_clip"),
    "batch_size 0": (["--batch_size", 0], "--batch_size"),
    "warmup negative": (["--warmup_steps", -1], "--warmup_steps"),
    "val_fraction 1": (["--val_fraction", 1], "--val_fraction"),
    "not a number": (["--max_steps", "abc"], "--max_steps"),
    "unknown flag": (["--max_stesp", 3], "--max_stesp"),
    "teacher path missing": (["--teacher", "llama:/no/such/teacher"], "/no/such/teacher"),
    "teacher kind unknown": (["--teacher", "gpt:/x"], "gpt"),
    "layer map names an unknown teacher": (["--use_mock", "--layer_map", '{"nosuch": {"1": 1}}'], "nosuch"),
}


@pytest.mark.parametrize("case", TRAIN_FLAGS)
def test_train_arguments_fail_before_any_work(case, data, tmp_path):
    flags, named = TRAIN_FLAGS[case]
    assert_one_error(call(cli.main, tiny(data, tmp_path, *flags)), named)
    assert not (tmp_path / "tokenizer.json").exists()          # no tokenizer was trained


def test_teacher_shorter_than_the_sequences_is_refused_before_the_tokenizer(data, finished, tmp_path):
    assert_one_error(call(cli.main, tiny(data, tmp_path, "--teacher", f"minillm:{finished}/checkpoint",
                                         "--max_seq_length", 32)), "max_position_embeddings", "32")
    assert not (tmp_path / "tokenizer.json").exists()


def test_teacher_specs_mean_what_they_look_like():
    assert parse_teacher_spec("ngram:0.5") == ("ngram", "", 0.5)
    assert parse_teacher_spec("llama=/models/a:b") == ("llama", "/models/a:b", 1.0)


GENERATE_FLAGS = {
    "temperature": (["--temperature", -1], "--temperature"),
    "top_k": (["--top_k", -1], "--top_k"),
    "top_p 0": (["--top_p", 0], "--top_p"),
    "top_p above 1": (["--top_p", 1.5], "--top_p"),
    "max_new_tokens": (["--max_new_tokens", -1], "--max_new_tokens"),
}


@pytest.mark.parametrize("case", GENERATE_FLAGS)
def test_generate_settings_are_checked(case, finished):
    flags, named = GENERATE_FLAGS[case]
    assert_one_error(call(generate_cli.main, ["--checkpoint", finished / "checkpoint", *flags]), named)


def test_evaluate_batch_size_is_checked(finished, data):
    assert_one_error(call(evaluate_cli.main, ["--checkpoint", finished / "checkpoint", "--data_path",
                                              data, "--batch_size", 0]), "--batch_size")


# ============================================================================= 6. config.json types

BAD_FIELDS = {"hidden_size": "16", "vocab_size": None, "num_hidden_layers": 1.0,
              "intermediate_size": -5, "rope_theta": "abc", "tie_word_embeddings": "yes"}


@pytest.fixture
def bad_config(finished, tmp_path, request):
    """A copy of the finished checkpoint whose config.json has one field of the wrong type."""
    import shutil
    folder = tmp_path / "bad"
    shutil.copytree(finished / "checkpoint", folder)
    config = json.loads((folder / "config.json").read_text())
    config[request.param] = BAD_FIELDS[request.param]
    (folder / "config.json").write_text(json.dumps(config))
    return folder, request.param


@pytest.mark.parametrize("bad_config", BAD_FIELDS, indirect=True)
def test_config_fields_of_the_wrong_type(bad_config, data, tmp_path):
    folder, field = bad_config
    with pytest.raises(CheckpointError, match=field):
        MiniTransformer.from_pretrained(folder)
    assert_one_error(call(evaluate_cli.main, ["--checkpoint", folder, "--data_path", data]), field, "config.json")
    assert_one_error(call(generate_cli.main, ["--checkpoint", folder]), field, "config.json")
    assert_one_error(call(cli.main, tiny(data, tmp_path / "out", "--teacher", f"minillm:{folder}")),
                     field, "config.json")


# ============================================================================= 4. data

def test_a_bom_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello world")
    assert load_texts(path) == ["hello world"]


def test_text_shorter_than_one_sequence(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("one line\n\nand another")
    code, _, err = call(cli.main, tiny(path, tmp_path / "out"))   # (after the tokenizer's own note)
    line = error_line(err)
    assert code == 2 and "--max_seq_length" in line and "short.txt" in line


def test_a_directory_as_data(tmp_path):
    assert_one_error(call(cli.main, tiny(tmp_path, tmp_path / "out")), "is a directory")


def test_invalid_utf8_names_an_option_that_exists(data, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(data.read_bytes() + "\n\ncaf\xe9".encode("latin-1"))
    line = assert_one_error(call(cli.main, tiny(path, tmp_path / "a")), "latin1.txt", "--encoding_errors replace")
    assert "byte offset" in line
    assert call(cli.main, tiny(path, tmp_path / "b", "--encoding_errors", "replace", steps=1))[0] == 0


def test_a_file_without_extension_is_plain_text(data, tmp_path):
    path = tmp_path / "GPL-3"
    path.write_bytes(data.read_bytes())
    code, printed, _ = call(cli.main, tiny(path, tmp_path / "out", steps=1))
    assert code == 0 and "reading it as plain text" in printed


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01\x02" * 100)
    assert_one_error(call(cli.main, tiny(path, tmp_path / "out")), "weights.bin", "NUL")


# ============================================================================= 5. output and disk

def test_output_dir_that_is_a_file(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_error(call(cli.main, tiny(data, tmp_path / "afile")), "afile", "is a file")
    assert_one_error(call(cli.main, tiny(data, tmp_path / "afile" / "sub")), "afile", "Not a directory")


def test_unwritable_output_dir(data, tmp_path, monkeypatch):
    """(Simulated, so that it runs as root too.) The OS refuses the probe write."""
    import mini_llm.files as files

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(files, "atomic_write", refuse)
    assert_one_error(call(cli.main, tiny(data, tmp_path / "out")), "--output_dir", "Permission denied")


def test_a_full_disk_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import training.run_checkpoint as rc
    real, calls = rc.save_training_state, [0]

    def full_disk(path, *args):
        calls[0] += 1
        if calls[0] == 2:                                  # the save of step 4
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args)
    monkeypatch.setattr(rc, "save_training_state", full_disk)
    code, _, err = call(cli.main, tiny(data, tmp_path, "--save_every", 2))
    assert code == 2
    line = error_line(err)
    assert "No space left on device" in line and "step 2" in line and "intact" in line
    assert step_of(tmp_path) == 2 and not (tmp_path / "checkpoint.tmp").exists()
    MiniTransformer.from_pretrained(tmp_path / "checkpoint")


# ============================================================================= 10. tokenizers

@pytest.mark.parametrize("kind", ["WordPiece", "Unigram"])
def test_other_tokenizer_models_are_named(kind, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": kind, "vocab": {"a": 0}}}))
    with pytest.raises(ValueError, match=f"a {kind}.*MiniLLM reads byte-level BPE"):
        BPETokenizer.load(path)


# ============================================================================= 7. device

def gpu_present():
    return backend._cupy_or_none() is not None


@pytest.mark.skipif(gpu_present(), reason="checks the machine without a GPU")
def test_gpu_asked_for_without_one(finished):
    env = {**os.environ, "MINILLM_DEVICE": "gpu"}
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=120)
    assert run("train.py", "--help").returncode == 0
    result = run("generate.py", "--checkpoint", finished / "checkpoint")
    assert_one_error((result.returncode, result.stdout, result.stderr), "gpu")


# ============================================================================= 8. baseline

def test_ctrl_c_during_the_baseline_reports_no_baseline(data, tmp_path, monkeypatch):
    real_train = cli.train

    def train(student, optimizer, *args, desc="train", **kwargs):
        if desc.startswith("baseline"):
            def one_step(params, grads, lr=None):
                signal.raise_signal(signal.SIGINT)
                return AdamW.step(optimizer, params, grads, lr)
            optimizer.step = one_step
        return real_train(student, optimizer, *args, desc=desc, **kwargs)
    monkeypatch.setattr(cli, "train", train)
    code, printed, _ = call(cli.main, tiny(data, tmp_path, "--compare_baseline"))
    assert code == 130
    assert "not reported" in printed and "without teachers" not in printed
    assert step_of(tmp_path) == 4                          # the student's run is saved


# ============================================================================= SIGKILL at every instant

KILLER = """
import os, signal, sys
log, kill_after = sys.argv[1], int(sys.argv[2])
real_replace, count = os.replace, [0]

def replace(src, dst):
    real_replace(src, dst)
    count[0] += 1
    with open(log, "a") as f:
        f.write(f"{count[0]} {dst}\\n")
    if count[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
import train                                    # installed: pip install -e .
sys.exit(train.main(sys.argv[3:]))
"""


def test_sigkill_at_every_instant_of_a_save_resumes_bit_for_bit(data, straight6, tmp_path):
    """Kill the run (SIGKILL) right after each os.replace of the save of step 4 (every file
    and both folder renames), and just before it; --resume must finish the run exactly as
    the uninterrupted one did: parameters, optimizer state, and metrics, each step once."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    flags = lambda out: tiny(data, out, "--save_every", 2, steps=6)
    log = tmp_path / "replaces.log"                    # a run that is not killed: where is what
    subprocess.run(list(map(str, [sys.executable, script, log, 0, *flags(tmp_path / "probe")])), cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    ends = [int(line.split()[0]) for line in log.read_text().splitlines()
            if line.split()[1].endswith(os.sep + "checkpoint")]      # the last rename of each save
    points = range(ends[0], ends[1] + 1)               # from after save 2 to after save 4
    runs = {k: subprocess.Popen(list(map(str, [sys.executable, script, tmp_path / f"log{k}", k,
                                               *flags(tmp_path / f"k{k}")])), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for k in points}
    for k, p in runs.items():
        assert p.wait(timeout=120) == -signal.SIGKILL, k
    for k in points:
        out = tmp_path / f"k{k}"
        assert step_of(out) in (2, 4), k
        code, _, err = call(cli.main, [*flags(out), "--resume"])
        assert code == 0, (k, err[-500:])
        assert logged_steps(out) == [1, 2, 3, 4, 5, 6], k
        assert without_timing(out) == without_timing(straight6), k
        assert_same_arrays(saved_arrays(straight6), saved_arrays(out))
        assert not any(f.exists() for f in siblings(out / "checkpoint")[1:]), k
