"""The teaching layer stays true: every demo runs (with tiny settings) and prints what it claims,
and the derivation notes in docs/ name functions that exist and cover every backward.

Demos (demos/*.py and tokenizer/demo_bpe.py) are loaded from their files and their `main(argv)` is called in-process, writing to
tmp_path; `--plot` is added when matplotlib is installed, and then the PNG must exist.
"""
import ast
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_demo(name, args, tmp_path, path=None, png=None):
    """Load demos/NAME.py (or PATH, relative to the repo root) as a module and call
    main(args + --out [+ --plot]); with --plot, tmp_path/PNG (default NAME.png) must exist."""
    spec = importlib.util.spec_from_file_location(f"demo_{name}", ROOT / (path or f"demos/{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(args + ["--out", str(tmp_path)] + (["--plot"] if HAS_MATPLOTLIB else []))
    if HAS_MATPLOTLIB:
        assert (tmp_path / (png or f"{name}.png")).is_file()
    return result


# ----------------------------------------------------------------------------- demos

def run_demo_bpe(args, tmp_path):
    return run_demo("bpe", args, tmp_path, path="tokenizer/demo_bpe.py", png="bpe_compression.png")


def test_demo_bpe_merges_a_text_worked_by_hand(tmp_path, capsys):
    # "ab ab ab ab" pre-tokenizes to "ab" + 3 x " ab": 11 bytes. (a, b) occurs 4 times, then
    # (' ', 'ab') 3 times: 7 tokens, then 4 (one per chunk), and nothing is left to merge.
    text = tmp_path / "tiny.txt"
    text.write_text("ab ab ab ab", encoding="utf-8")
    result = run_demo_bpe(["--text", str(text), "--merges", "5"], tmp_path)
    out = capsys.readouterr().out
    assert "training text: 11 bytes, 4 chunks, 2 distinct" in out
    assert "merge 1/5: (97, 98) 'a' + 'b' -> 256 'ab'  count 4  | 7 tokens, 1.57 bytes/token" in out
    assert "merge 2/5: (32, 256) ' ' + 'ab' -> 257 ' ab'  count 3  | 4 tokens, 2.75 bytes/token" in out
    assert "every chunk is now one token: stopping after 2 merges" in out
    assert result["merges"] == [(97, 98), (32, 256)]
    assert result["ratios"] == [1.0, 11 / 7, 11 / 4]
    assert "BPETokenizer.train (Numba) learned the same 2 merges: True" in out and result["same_merges"]


def test_demo_bpe_built_in_text(tmp_path, capsys):
    from tokenizer.bpe_tokenizer import BPETokenizer
    from tokenizer.demo_bpe import BUILT_IN_TEXT as text
    result = run_demo_bpe(["--merges", "12"], tmp_path)
    out = capsys.readouterr().out
    merges, ratios = result["merges"], result["ratios"]
    assert len(merges) == 12 and len(ratios) == 13
    assert all(a < b for a, b in zip(ratios, ratios[1:]))          # each merge shortens the text
    assert "BPETokenizer.train (Numba) learned the same 12 merges: True" in out and result["same_merges"]
    assert "round trip exact: True" in out and result["round_trip"]
    # the printed compression of the training text is what the library's tokenizer gives
    n_bytes, n_tokens = len(text.encode()), len(BPETokenizer(vocab_size=256 + 12 + 4).train(text).encode(text))
    assert "merge 12/12: " in out and f"| {n_tokens} tokens, {n_bytes / n_tokens:.2f} bytes/token" in out
    assert re.search(rf"training text\s+{n_bytes}\s+{n_tokens}\s+{n_bytes / n_tokens:.2f}", out)
    assert ratios[-1] == pytest.approx(n_bytes / n_tokens)
    assert f"  ids:    {result['ids']}" in out
    assert (result["png"] is not None) == HAS_MATPLOTLIB


def test_demo_bpe_refuses_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_demo_bpe(["--merges", "0"], tmp_path)
    assert "--merges must be at least 1, got 0" in capsys.readouterr().err


def test_attention_patterns(tmp_path, capsys):
    result = run_demo("attention_patterns", ["--seq_len", "6", "--window", "3", "--layers", "3",
                                             "--steps", "5"], tmp_path)
    out = capsys.readouterr().out
    assert "query   5 ...###" in out                       # row 5 of the W=3 band: keys 3..5
    assert [m for _, m, _ in result["receptive_field"]] == [f for _, _, f in result["receptive_field"]]
    assert "matches every depth" in out
    # prompt of 2 tokens then 5 steps: positions 0..6; the 3 slots hold the last 3
    assert sorted(result["slot_history"][-1]) == [4, 5, 6]
    assert result["slot_history"][0] == [0, 1, -1]
    assert result["cache_error"] < 1e-10


def test_rope(tmp_path, capsys):
    result = run_demo("rope", ["--head_dim", "4"], tmp_path)
    out = capsys.readouterr().out
    same = np.array(result["equal_offset_scores"])
    assert np.ptp(same) < 1e-9 * max(1.0, np.abs(same).max())
    assert np.min(np.abs(np.array(result["other_offset_scores"]) - same[0])) > 1e-6
    assert result["length_error"] < 1e-12 and result["turn_error"] < 1e-12
    assert "depends only on m - n" in out


def test_gradient_check(tmp_path, capsys):
    result = run_demo("gradient_check", [], tmp_path)
    out = capsys.readouterr().out
    assert max(result["rmsnorm"]) < 1e-6
    assert len(result["model"]) == 21 and max(result["model"].values()) < 1e-6
    sweep = result["eps_sweep"]
    assert min(sweep["float64"]) < 1e-8 < min(sweep["float32"])   # why checks run in float64
    assert "all below 1e-06" in out


def test_glu(tmp_path, capsys):
    result = run_demo("glu", ["--steps", "30", "--seeds", "2", "--samples", "64"], tmp_path)
    out = capsys.readouterr().out
    assert result["parameters"]["SwiGLU"] == result["parameters"]["plain"]
    losses = result["test_losses"]["SwiGLU"] + result["test_losses"]["plain"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert f"SwiGLU wins {result['swiglu_wins']} of 2 seeds" in out


def test_kl_directions(tmp_path, capsys):
    result = run_demo("kl_directions", ["--grid", "121", "--steps", "300"], tmp_path)
    out = capsys.readouterr().out
    teacher, forward = result["teacher"], result["forward KL from mu=1"]
    assert abs(forward["mean"]) < 0.1 and abs(forward["std"] - teacher["std"]) < 0.1
    assert result["reverse KL from mu=1"]["right"] > 0.5 > result["reverse KL from mu=1"]["left"]
    assert result["reverse KL from mu=-1"]["left"] > 0.5 > result["reverse KL from mu=-1"]["right"]
    assert "settles on the right mode" in out and "settles on the left mode" in out


TINY_TRAINING = ["--steps", "3", "--vocab_size", "300", "--seq_len", "16", "--batch_size", "2"]
TINY_SAMPLING = ["--new_tokens", "5", "--speed_tokens", "5"]


def test_generate_trains_then_samples(tmp_path, capsys):
    result = run_demo("generate", TINY_TRAINING + TINY_SAMPLING, tmp_path)
    out = capsys.readouterr().out
    assert len(result["samples"]) == 6 and all(text for _, text in result["samples"])
    assert result["same_tokens"]
    assert "tokens/s" in out and "greedy (temperature 0)" in out and "top-p 0.9, temperature 1" in out


def test_generate_from_checkpoint(tmp_path, capsys):
    from mini_llm.model.transformer import MiniTransformer, TransformerConfig
    from tokenizer.bpe_tokenizer import BPETokenizer
    tokenizer = BPETokenizer(vocab_size=270).train("the cat sat on the mat; the cat ate the hat")
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                               num_kv_heads=1, intermediate_size=32, max_seq_length=32, sliding_window=4)
    ckpt = tmp_path / "ckpt"
    MiniTransformer(config).save_pretrained(ckpt)
    tokenizer.save(ckpt / "tokenizer.json")
    result = run_demo("generate", ["--checkpoint", str(ckpt), "--prompt", "the cat"] + TINY_SAMPLING, tmp_path)
    assert result["same_tokens"] and "trained a BPE" not in capsys.readouterr().out
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(SystemExit, match="no tokenizer.json"):
        run_demo("generate", ["--checkpoint", str(ckpt)], tmp_path)


def test_kernels(tmp_path, capsys):
    result = run_demo("kernels", ["--shapes", "16:4,40:8", "--merges", "5", "--repeats", "1"], tmp_path)
    out = capsys.readouterr().out
    assert [(T, W) for T, W, *_ in result["attention"]] == [(16, 4), (40, 8)]
    assert all(diff < 1e-5 for _, _, diff, _, _ in result["attention"])
    assert result["bpe"]["counts_equal"] and result["bpe"]["merges_equal"]
    assert "count pairs once" in out and "train 5 merges" in out


# ----------------------------------------------------------------------------- docs

def definitions(path):
    """Top-level function and class names of a Python file, plus Class.method names."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef))
    return names


def code_files():
    patterns = ["mini_llm/**/*.py", "training/*.py", "tokenizer/*.py", "demos/*.py", "train.py"]
    return [p for pattern in patterns for p in ROOT.glob(pattern)]


def backward_functions():
    """Every `def *_backward*` in mini_llm/model/*.py and training/losses.py, as cited in docs:
    methods as Class.method."""
    found = set()
    for path in [*ROOT.glob("mini_llm/model/*.py"), ROOT / "training" / "losses.py"]:
        found.update(n for n in definitions(path) if re.search(r"_backward", n.split(".")[-1]))
    return found


def test_every_backward_is_indexed():
    readme = (DOCS / "README.md").read_text(encoding="utf-8")
    backwards = backward_functions()
    assert {"rmsnorm_backward", "kl_backward", "sliding_window_attention_backward"} <= backwards
    missing = sorted(name for name in backwards if f"`{name}()`" not in readme)
    assert not missing, f"docs/README.md does not map these backward functions to a note: {missing}"


def test_cited_files_and_functions_exist():
    """`path.py` must exist; `name()` / `Class.method()` must be defined: in the file named on
    the same line when the line names exactly one file, else somewhere in the code."""
    everywhere = set().union(*(definitions(p) for p in code_files()))
    problems = []
    for note in sorted(DOCS.glob("*.md")):
        for lineno, line in enumerate(note.read_text(encoding="utf-8").splitlines(), start=1):
            files = re.findall(r"`([\w./-]+\.py)`", line)
            where = f"{note.name}:{lineno}"
            problems += [f"{where}: no file {f}" for f in files if not (ROOT / f).is_file()]
            scope = definitions(ROOT / files[0]) if len(files) == 1 and (ROOT / files[0]).is_file() else everywhere
            for name in re.findall(r"`((?:\w+\.)?\w+)\(\)`", line):
                if name not in scope:
                    problems.append(f"{where}: {name}() is not defined in {files[0] if scope is not everywhere else 'the code'}")
    assert not problems, "\n".join(problems)


def heading_anchor(heading):
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_notes_resolve():
    anchors = {note.name: {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", note.read_text(encoding="utf-8"), re.M)}
               for note in DOCS.glob("*.md")}
    for note in DOCS.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([\w.]*\.md)?(?:#([^)]+))?\)", note.read_text(encoding="utf-8")):
            target = target or note.name
            assert target in anchors, f"{note.name} links to missing docs/{target}"
            assert not anchor or anchor in anchors[target], f"{note.name} links to missing #{anchor} in {target}"


def test_mock_training_demo_runs(tmp_path, capsys):
    ppl = run_demo("mock_training_demo", ["--steps", "3", "--teacher_steps", "3"], tmp_path,
                   path="training/mock_training_demo.py")
    assert set(ppl) == {"teacher", "student alone", "student distilled"}
    assert all(math.isfinite(v) and v > 1 for v in ppl.values())
    out = capsys.readouterr().out
    assert "student distilled" in out
    assert f"plot: {tmp_path / 'mock_training_demo.png'}" in out or not HAS_MATPLOTLIB


# ----------------------------------------------------------------------------- every demo's command line

DEMOS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "demos").glob("*.py")) + [
    "tokenizer/demo_bpe.py", "training/mock_training_demo.py"]


@pytest.mark.parametrize("path", DEMOS)
def test_every_demo_has_help_and_writes_figures_to_demos_output(path, capsys, monkeypatch):
    """--help prints the options and exits without running the demo; --plot is there, and the
    figure's folder defaults to demos/output (the place the README documents)."""
    spec = importlib.util.spec_from_file_location(f"help_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("COLUMNS", "1000")     # argparse wraps by the terminal's width (and the path's length)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--plot" in out
    one_line = " ".join(out.split())
    assert re.search(r"--out OUT .*default: [^()]*demos/output\b", one_line), out
    assert "val perplexity" not in out and "merge 1/" not in out           # nothing ran
