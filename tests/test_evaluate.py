"""evaluate(): the token-weighted mean next-token cross-entropy, against a direct NumPy
computation and against Hugging Face `transformers` on the same checkpoint; and the
evaluate.py CLI prints exactly that perplexity.

    loss = (1 / (N·T)) Σ_n Σ_t -log softmax(logits[n, t])[target[n, t]],  perplexity = exp(loss)

With batches of unequal size (N=5, batch_size=2: 2, 2, 1 sequences) the mean of the batch
means weighs the last sequence double; the tests check that evaluate does not."""
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.loop import evaluate

ROOT = Path(__file__).resolve().parent.parent
V, T = 64, 12


def small_model(window=5, vocab_size=V, dtype=np.float64, seed=0):
    """A 2-layer Mistral-shaped model with weights ~ N(0, 0.2): clearly non-uniform logits."""
    config = TransformerConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=48, max_seq_length=2 * T,
                               sliding_window=window, rope_theta=5000.0)
    model = MiniTransformer(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        if not name.endswith("norm.weight"):
            p[...] = rng.normal(0.0, 0.2, size=p.shape)
    return model


def log_softmax(z):
    """log softmax over the last axis: z - max - log Σ exp(z - max)."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_nll(logits, targets):
    """-log p(target) at every position: logits (N, T, V), targets (N, T) -> (N, T)."""
    return -np.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]


def test_evaluate_is_the_token_weighted_mean():
    model = small_model()
    sequences = np.random.default_rng(0).integers(0, V, size=(5, T + 1))      # (N, T+1)
    nll = token_nll(model.forward(sequences[:, :-1], keep_cache=False), sequences[:, 1:])
    loss = evaluate(model, sequences, batch_size=2)
    assert abs(loss - nll.mean()) < 1e-10
    # the mean of the batch means (2, 2, 1 sequences) is a different number here
    batch_means = [nll[0:2].mean(), nll[2:4].mean(), nll[4:5].mean()]
    assert abs(np.mean(batch_means) - nll.mean()) > 1e-3
    # the batch size changes nothing, and a teacher given as a function ids -> logits works too
    assert abs(evaluate(model, sequences, batch_size=3) - loss) < 1e-10
    teacher = lambda ids: model.forward(ids, keep_cache=False)               # noqa: E731
    assert abs(evaluate(teacher, sequences, batch_size=4) - loss) < 1e-10


def test_perplexity_equals_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    small_model().save_pretrained(tmp_path)
    ours = MiniTransformer.from_pretrained(tmp_path, dtype=np.float64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float64, attn_implementation="eager").eval()
    assert type(hf).__name__ == "MistralForCausalLM" and hf.config.sliding_window == 5
    sequences = np.random.default_rng(1).integers(0, V, size=(5, T + 1))
    with torch.no_grad():
        logits = hf(torch.tensor(sequences[:, :-1])).logits                   # (N, T, V)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                               torch.tensor(sequences[:, 1:]).reshape(-1))
    hf_ppl = math.exp(float(ce))
    ppl = math.exp(evaluate(ours, sequences, batch_size=2))
    # transformers keeps RoPE and RMSNorm in float32 inside a float64 model: ~1e-7 apart
    assert abs(ppl - hf_ppl) / hf_ppl < 1e-6
    assert abs(ppl - V) / V > 0.01                                 # not the uniform model


def test_cli_prints_the_function_s_perplexity(tmp_path, capsys):
    text = ("Attention lets every token look at the tokens before it.\n\n"
            "The window keeps only the most recent ones.\n\n") * 15
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    tokenizer = BPETokenizer(vocab_size=300).train(load_texts(data))
    folder = tmp_path / "ckpt"
    small_model(vocab_size=tokenizer.vocab_size, dtype=np.float32).save_pretrained(folder)
    tokenizer.save(folder)

    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--checkpoint", str(folder), "--data_path", str(data), "--seq_len", str(T),
                   "--batch_size", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    model, tok = cli.load_checkpoint(folder)
    sequences = make_sequences(encode_documents(tok, load_texts(data)), T)
    assert len(sequences) % 3 != 0                                     # a partial last batch
    loss = evaluate(model, sequences, batch_size=3)
    nll = token_nll(np.asarray(model.forward(sequences[:, :-1], keep_cache=False), np.float64),
                    sequences[:, 1:])
    assert abs(loss - nll.mean()) < 1e-5                               # float32 model
    match = re.fullmatch(r".*: ([\d,]+) tokens \| loss ([\d.]+) \| perplexity ([\d.]+)\n", out)
    assert match, out
    assert int(match[1].replace(",", "")) == sequences[:, 1:].size
    assert match[2] == f"{loss:.4f}" and match[3] == f"{math.exp(loss):.2f}"


def test_cli_notes_when_the_text_was_trained_on(tmp_path, capsys):
    """A checkpoint saved by train.py carries the run's args; evaluating on its training file
    (or a copy) prints a note naming the trained share, on stderr; held-out text gets none."""
    from mini_llm.checkpoint import save_training_state
    documents = [f"Document {i}: attention lets token {i} look back at the tokens before it."
                 for i in range(10)]
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(documents), encoding="utf-8")
    train_texts, val_texts = split_train_val(load_texts(data), 0.2, 3)
    tokenizer = BPETokenizer(vocab_size=300).train(train_texts)
    folder = tmp_path / "ckpt"
    small_model(vocab_size=tokenizer.vocab_size, dtype=np.float32).save_pretrained(folder)
    tokenizer.save(folder)
    save_training_state(folder / "training_state.safetensors", {},
                        {"step": 1, "args": {"data_path": str(data), "val_fraction": 0.2, "seed": 3}})
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n\n".join(val_texts), encoding="utf-8")
    copy = tmp_path / "copy.txt"
    copy.write_text(data.read_text(encoding="utf-8"), encoding="utf-8")

    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    for path, note in ((data, True), (copy, True), (held_out, False)):
        assert cli.main(["--checkpoint", str(folder), "--data_path", str(path), "--seq_len", str(T)]) == 0
        out, err = capsys.readouterr()
        assert re.fullmatch(r".*: [\d,]+ tokens \| loss [\d.]+ \| perplexity [\d.]+\n", out)   # stdout unchanged
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert notes == ([f"note: {len(train_texts)} of 10 documents are in this checkpoint's training "
                          f"split ({data}, val_fraction 0.2, seed 3): this perplexity is not on "
                          "held-out text"] if note else []), err
