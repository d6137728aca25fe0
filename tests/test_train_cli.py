"""End-to-end tests of the command line: `train.main([...])` run in-process on a tiny model.

Each run trains a 1-layer, width-16 student for a few steps on ~3 KB of text (the first
paragraphs of data/sample_training.txt), so the whole file takes seconds. What is checked is
what a user of `python train.py` relies on: the exit code, the files written, the log, that
--resume and the offline teacher cache change nothing in the numbers, that Ctrl-C saves a
checkpoint that resumes exactly, and that bad input is one "error:" line with exit code 2.
"""
import contextlib
import io
import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest

import train as cli
from mini_llm import backend
from mini_llm.checkpoint import load_training_state
from mini_llm.model.transformer import MiniTransformer
from mini_llm.optim import AdamW
from training import options

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"
TINY = ["--vocab_size", "300", "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2",
        "--intermediate_size", "32", "--max_seq_length", "16", "--batch_size", "4",
        "--max_steps", "6", "--mock_teacher_steps", "3", "--eval_every", "3", "--sample_tokens", "5"]


def paragraphs(first, last):
    return "\n\n".join(SAMPLE.read_text(encoding="utf-8").split("\n\n")[first:last])


def run_cli(data, out, *extra):
    """train.main on the tiny settings (later flags override earlier ones). Returns
    (exit code, what it printed to stdout)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["--data_path", str(data), "--output_dir", str(out), *TINY, *map(str, extra)])
    return code, stdout.getvalue()


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "ms"} for row in rows]


def saved_arrays(out):
    """Every array of a run's checkpoint: the student's parameters, then (prefixed "state:")
    the projections and AdamW moments of training_state.safetensors."""
    ckpt = Path(out) / "checkpoint"
    arrays = {k: backend.to_host(v) for k, v in MiniTransformer.from_pretrained(ckpt).params.items()}
    state, _ = load_training_state(ckpt / "training_state.safetensors")
    arrays.update({f"state:{k}": backend.to_host(v) for k, v in state.items()})
    return arrays


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"arrays differ: {different[:5]}"


def saved_step(out):
    _, meta = load_training_state(Path(out) / "checkpoint" / "training_state.safetensors")
    return meta["step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(paragraphs(0, 6), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mock_run(data, tmp_path_factory):
    """The tiny --use_mock run, 6 steps straight: (output dir, exit code, stdout)."""
    out = tmp_path_factory.mktemp("mock_run")
    code, printed = run_cli(data, out, "--use_mock")
    return out, code, printed


@pytest.fixture(scope="module")
def other_vocab_run(data, tmp_path_factory):
    """A tiny run without teachers whose tokenizer has 400 tokens (the students have 300)."""
    out = tmp_path_factory.mktemp("vocab400")
    code, _ = run_cli(data, out, "--vocab_size", "400", "--max_steps", "2")
    assert code == 0
    return out


# ----------------------------------------------------------------------------- a whole run

def test_mock_run_writes_a_loadable_checkpoint_metrics_and_a_report(mock_run):
    out, code, printed = mock_run
    assert code == 0
    ckpt = out / "checkpoint"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_state.safetensors"):
        assert (ckpt / name).is_file(), name
    model = MiniTransformer.from_pretrained(ckpt)
    assert model.config.vocab_size == 300 and model.config.hidden_size == 16
    logits = backend.to_host(model.forward(np.array([[1, 2, 3, 4]])))
    assert logits.shape == (1, 4, 300) and np.isfinite(logits).all()

    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert {"step", "total", "ce", "lr", "kl.mock_llama", "hidden.mock_llama", "kl.ngram"} <= r.keys()
        assert all(math.isfinite(v) for v in r.values())
        assert ("val_loss" in r) == ("val_ppl" in r) == (r["step"] in (3, 6))
    assert rows[-1]["val_ppl"] == pytest.approx(math.exp(rows[-1]["val_loss"]))

    assert "mock teacher: training" in printed
    table = printed.split("val perplexity")[1]
    for name in ("teacher mock_llama", "teacher ngram", "student (distilled)"):
        assert re.search(rf"{re.escape(name)}\s+\d+\.\d\d\n", table), name
    assert "\nsample (temperature 0.8, top-k 40):\n" in printed


def test_the_sample_shows_its_prompt_and_continuation_apart(mock_run, data):
    """The prompt is real held-out text, the first 8 tokens of the first validation document;
    only the continuation is the model's. The report prints them on separate lines."""
    from training.data import load_texts, split_train_val
    _, _, printed = mock_run
    prompt = re.search(r"\n  prompt \(8 validation tokens\): '(.*)'\n", printed)
    continuation = re.search(r"\n  continuation \((\d+) generated tokens\): '(.*)'\n", printed)
    assert prompt and continuation, printed
    _, val_texts = split_train_val(load_texts(data), 0.1, 0)
    assert prompt[1] and val_texts[0].startswith(prompt[1])
    assert 1 <= int(continuation[1]) <= 5                          # --sample_tokens 5 (or EOS)


def test_the_run_prints_its_time_per_step_and_estimate(mock_run):
    """After step 3 (the first step, with its compile and allocations, left out of the timing)."""
    _, _, printed = mock_run
    assert re.search(r"\ntiming: [\d.]+ (ms|s|min|h) per step \(steps 2-3\) -> about [\d.]+ (ms|s|min|h) "
                     r"for the 3 steps left\n", printed), printed


def test_every_flag_has_help_and_its_default():
    """python train.py --help: each flag says what it is (not only its default) and, unless
    it is an on/off switch, its default; the size flags name the --use_mock default too."""
    parser = options.build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag, text = action.option_strings[0], (action.help or "")
        meaning = re.sub(r"\(?default:.*", "", text).strip(" (;,")
        assert len(meaning.split()) >= 2, f"{flag}: help says only {text!r}"
        if action.nargs != 0:                                      # store_true flags need none
            assert "default" in text, f"{flag}: help does not say its default: {text!r}"
    for name in options.SIZES:
        assert "with --use_mock" in next(a.help for a in parser._actions if a.dest == name)
    text = parser.format_help()
    assert "query heads H" in text and "~7-8 s on 2 CPU cores" in text


def test_mock_run_logs_the_loss_it_minimises(mock_run):
    """With teachers the distillation defaults apply: total = 0.2 CE + Σ_t 1 · (0.8 KL_t
    [+ 0.5 hidden_t]), and the log says so."""
    out, _, printed = mock_run
    assert "loss: 0.2·CE + Σ_teachers weight·(0.8·KL(forward, τ=1) + 0.5·hidden_mse)" in printed
    for r in metrics(out):
        expected = 0.2 * r["ce"] + 0.8 * r["kl.mock_llama"] + 0.5 * r["hidden.mock_llama"] + 0.8 * r["kl.ngram"]
        assert r["total"] == pytest.approx(expected, rel=1e-12)


def test_plain_training_is_cross_entropy_with_weight_one(data, tmp_path):
    """No teacher: the loss is the cross-entropy itself (weight 1), whatever the distillation
    defaults are, and --compare_baseline's baseline is the same run."""
    code, printed = run_cli(data, tmp_path, "--max_steps", 3, "--compare_baseline")
    assert code == 0
    assert "loss: 1·CE (plain training: no teacher)" in printed
    rows = metrics(tmp_path)
    assert rows and all(r["total"] == r["ce"] for r in rows)
    assert not any(k.startswith(("kl.", "hidden.", "contrastive.")) for r in rows for k in r)
    student = float(re.search(r"\nstudent\s+(\d+\.\d\d)\n", printed).group(1))
    baseline = float(re.search(r"without teachers \(CE weight 1\)\s+(\d+\.\d\d)\n", printed).group(1))
    assert student == baseline
    assert "CE weight 0.2" not in printed


def test_compare_baseline_reports_both_ce_scales(data, tmp_path):
    code, printed = run_cli(data, tmp_path, "--use_mock", "--max_steps", 3, "--compare_baseline")
    assert code == 0
    table = printed.split("val perplexity")[1]
    for name in ("student (distilled)", "student without teachers (CE weight 1)",
                 "student without teachers (CE weight 0.2)"):
        assert re.search(rf"{re.escape(name)}\s+\d+\.\d\d\n", table), name


def test_distillation_flags_reach_the_config():
    args = options.parse_args(["--teacher", "ngram", "--temperature", "2.5", "--kl_direction", "reverse",
                           "--kl_weight", "0.6", "--hidden_weight", "0.3", "--contrastive_weight", "0.2",
                           "--hidden_loss", "cosine", "--cross_vocab", "--layer_map", '{"a": {"1": 1}}'])
    config = options.distill_config(args)
    assert (config.temperature, config.kl_direction, config.kl_weight, config.hidden_weight,
            config.contrastive_weight, config.hidden_loss, config.cross_vocab, config.layer_map) == \
        (2.5, "reverse", 0.6, 0.3, 0.2, "cosine", True, '{"a": {"1": 1}}')
    assert args.ce_weight == 0.2                             # a teacher: the distillation default
    assert options.parse_args([]).ce_weight == 1.0               # none: plain training
    assert options.parse_args(["--ce_weight", "0.5"]).ce_weight == 0.5


# ----------------------------------------------------------------------------- resume

def test_resume_continues_bit_for_bit(mock_run, data, tmp_path):
    """6 steps straight == 3 steps, then --resume to 6: parameters, projections, AdamW moments
    and the logged numbers of steps 4..6. The mock teacher is trained in the first half and
    loaded from output_dir/mock_teacher in the second."""
    straight, code, _ = mock_run
    assert code == 0
    assert run_cli(data, tmp_path, "--use_mock", "--max_steps", 3)[0] == 0
    assert saved_step(tmp_path) == 3
    code, printed = run_cli(data, tmp_path, "--use_mock", "--max_steps", 6, "--resume")
    assert code == 0
    assert "mock teacher: loaded" in printed and "training steps 3..6" in printed
    assert saved_step(tmp_path) == 6

    resumed_arrays = saved_arrays(tmp_path)
    assert any(k.startswith("state:proj.mock_llama.") for k in resumed_arrays)   # hidden_weight 0.5
    assert_same_arrays(saved_arrays(straight), resumed_arrays)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert without_timing(rows[3:]) == without_timing(metrics(straight)[3:])


def test_resume_without_a_checkpoint_is_an_error(data, tmp_path, capsys):
    code, _ = run_cli(data, tmp_path, "--resume")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "checkpoint" in err[0]


# ----------------------------------------------------------------------------- offline teacher cache

def test_teacher_cache_is_reused_and_changes_nothing(data, tmp_path, monkeypatch):
    stored = []
    put = cli.TeacherOutputCache.put
    monkeypatch.setattr(cli.TeacherOutputCache, "put",
                        lambda self, indices, *a: (stored.append(len(indices)), put(self, indices, *a)))
    code, printed = run_cli(data, tmp_path, "--use_mock", "--teacher_cache_topk", 8)
    assert code == 0
    assert "reusing" not in printed and sum(stored) == 2 * 6 * 4     # 2 teachers, 6 batches of 4
    for teacher in ("mock_llama", "ngram"):
        assert (tmp_path / "teacher_cache" / teacher / "meta.json").is_file()
    first_rows, first_arrays = metrics(tmp_path), saved_arrays(tmp_path)

    stored.clear()
    code, printed = run_cli(data, tmp_path, "--use_mock", "--teacher_cache_topk", 8, "--overwrite")
    assert code == 0
    assert re.search(r"teacher cache \S+ngram: reusing 24/\d+ stored sequences", printed)
    assert sum(stored) == 0                                          # every batch read back
    assert without_timing(metrics(tmp_path)) == without_timing(first_rows)
    assert_same_arrays(first_arrays, saved_arrays(tmp_path))


# ----------------------------------------------------------------------------- Ctrl-C

def interrupt_student_after(monkeypatch, steps):
    """Make train.py's student loop receive a real SIGINT during its `steps`-th update (the
    mock teacher's own training loop is left alone)."""
    real_train = cli.train

    def train(student, optimizer, *args, desc="train", **kwargs):
        if desc == "student":
            count = [0]

            def step(params, grads, lr=None):
                count[0] += 1
                if count[0] == steps:
                    signal.raise_signal(signal.SIGINT)
                return AdamW.step(optimizer, params, grads, lr)
            optimizer.step = step
        return real_train(student, optimizer, *args, desc=desc, **kwargs)
    monkeypatch.setattr(cli, "train", train)


def test_ctrl_c_saves_the_step_and_resume_finishes_the_run(data, tmp_path, monkeypatch):
    flags = ("--use_mock", "--warmup_steps", 2)                      # cosine decay from step 3 on
    straight = tmp_path / "straight"
    assert run_cli(data, straight, *flags)[0] == 0

    run = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_student_after(patch, 2)
        code, printed = run_cli(data, run, *flags)
    assert code == 130
    assert "interrupted: checkpoint of step 2 saved" in printed and "sample:" not in printed
    assert saved_step(run) == 2 and [r["step"] for r in metrics(run)] == [1, 2]

    code, printed = run_cli(data, run, *flags, "--resume")
    assert code == 0 and "training steps 2..6" in printed
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert without_timing(metrics(run)) == without_timing(metrics(straight))
    assert_same_arrays(saved_arrays(straight), saved_arrays(run))


def test_ctrl_c_while_the_mock_teacher_trains_stops_the_run(data, tmp_path, monkeypatch):
    calls = [0]

    def step(self, params, grads, lr=None):
        calls[0] += 1
        if calls[0] == 1:                                            # the mock teacher's first step
            signal.raise_signal(signal.SIGINT)
        return real_step(self, params, grads, lr)
    real_step = AdamW.step
    monkeypatch.setattr(AdamW, "step", step)
    code, _ = run_cli(data, tmp_path, "--use_mock")
    assert code == 130
    assert not (tmp_path / "mock_teacher" / "fingerprint.json").exists()


# ----------------------------------------------------------------------------- bad input

BAD_INPUTS = {
    "missing data file": (lambda d, t, o: ["--data_path", t / "nope.txt"], "nope.txt"),
    "empty data file": (lambda d, t, o: ["--data_path", t / "empty.txt"], "empty.txt"),
    "json without text": (lambda d, t, o: ["--data_path", t / "records.json"], "'text'"),
    "teacher path not a checkpoint": (lambda d, t, o: ["--teacher", "llama:/nonexistent"], "/nonexistent"),
    "teacher with another vocabulary": (lambda d, t, o: ["--teacher", f"minillm:{o}/checkpoint"], "vocabulary"),
    "layer map names a missing layer": (lambda d, t, o: [
        "--teacher", f"minillm:{d}/checkpoint", "--tokenizer_path", f"{d}/checkpoint/tokenizer.json",
        "--hidden_weight", "0.5", "--layer_map", '{"minillm": {"99": 1}}'], "layer 99"),
    "negative kl weight": (lambda d, t, o: ["--kl_weight", "-1"], "--kl_weight"),
    "negative teacher weight": (lambda d, t, o: ["--teacher", f"minillm:{d}/checkpoint:-1"], "weight"),
    "missing tokenizer": (lambda d, t, o: ["--tokenizer_path", t / "nope.json"], "nope.json"),
    "tokenizer that is not json": (lambda d, t, o: ["--tokenizer_path", t / "empty.txt"], "empty.txt"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line(case, data, mock_run, other_vocab_run, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "records.json").write_text('[{"body": "a document without its text field"}]')
    flags, named = BAD_INPUTS[case]
    out = tmp_path / "out"
    code, _ = run_cli(data, out, *flags(mock_run[0], tmp_path, other_vocab_run))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error:") and named in err[0], err[0]
    assert not (out / "checkpoint").exists()


# ----------------------------------------------------------------------------- real teachers

def test_minillm_teacher_from_an_earlier_run(mock_run, data, tmp_path):
    teacher = mock_run[0] / "checkpoint"
    code, printed = run_cli(data, tmp_path, "--teacher", f"minillm:{teacher}",
                            "--tokenizer_path", teacher / "tokenizer.json", "--hidden_weight", 0.5)
    assert code == 0
    for r in metrics(tmp_path):
        assert math.isfinite(r["kl.minillm"]) and math.isfinite(r["hidden.minillm"])
    assert re.search(r"teacher minillm\s+\d+\.\d\d\n", printed)


def test_cross_vocab_teacher_teaches_through_uld(other_vocab_run, data, tmp_path):
    code, printed = run_cli(data, tmp_path, "--teacher", f"minillm:{other_vocab_run}/checkpoint",
                            "--cross_vocab", "--hidden_weight", 0.5)
    assert code == 0
    rows = metrics(tmp_path)
    assert all(math.isfinite(r["uld.minillm"]) and r["uld.minillm"] > 0 for r in rows)
    assert "teacher minillm" not in printed        # perplexities over other tokens are not comparable


def test_teacher_with_a_different_tokenizer_of_the_same_size_is_refused(data, tmp_path, capsys):
    other_text = tmp_path / "other.txt"
    other_text.write_text(paragraphs(20, 26), encoding="utf-8")
    assert run_cli(other_text, tmp_path / "teacher", "--max_steps", 2)[0] == 0
    capsys.readouterr()
    code, _ = run_cli(data, tmp_path / "student", "--teacher", f"minillm:{tmp_path}/teacher/checkpoint")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "tokenizer" in err[0]
