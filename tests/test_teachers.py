"""Teacher adapters: transformer teachers loaded from checkpoint folders, the n-gram teacher
(against a plain-Python reference, and better than uniform on held-out text), the offline
top-k cache, and the parsers for --teacher and --layer_map with their one-line errors."""
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training.knowledge_transfer import DistillConfig, KnowledgeTransfer
from training.losses import teacher_topk
from training.ngram_teacher import NGramTeacher
from training.teacher_cache import TeacherOutputCache, sequences_fingerprint
from training.teacher_specs import auto_layer_map, parse_layer_map, parse_teacher_spec
from training.teachers import TransformerTeacher, check_vocab, load_llama_teacher, load_minillm_teacher
from tests.errors import one_line_error

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"


@pytest.fixture(scope="module")
def small_tokenizer():
    return BPETokenizer(vocab_size=300).train(SAMPLE.read_text(encoding="utf-8"))


def tiny_model(vocab_size=300, seed=0):
    config = TransformerConfig(vocab_size=vocab_size, hidden_size=16, num_layers=3, num_heads=4,
                               num_kv_heads=2, intermediate_size=24, max_seq_length=32, sliding_window=6)
    return MiniTransformer(config, seed=seed)


# ----------------------------------------------------------------------------- transformer teachers

def test_transformer_teacher_returns_logits_and_chosen_hidden_states():
    model = tiny_model()
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 9))
    expected = model.forward(ids)
    states = [h.copy() for h in model.hidden_states]
    teacher = TransformerTeacher("t", "minillm", model)
    logits, hidden = teacher.forward(ids, hidden_layers=(0, 3))
    assert np.allclose(logits, expected)
    assert set(hidden) == {0, 3} and np.allclose(hidden[0], states[0]) and np.allclose(hidden[3], states[3])
    assert (teacher.vocab_size, teacher.num_layers, teacher.hidden_size) == (300, 3, 16)
    assert model._cache is None and model.hidden_states == []       # nothing kept for backward
    one_line_error(lambda: teacher.forward(ids, (4,)), "0..3")


def saved_teacher_folder(tmp_path, tokenizer):
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt" / "tokenizer.json")
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize("loader, kind", [(load_llama_teacher, "llama"), (load_minillm_teacher, "minillm")])
def test_checkpoint_folder_loads_as_teacher(tmp_path, loader, kind, small_tokenizer):
    model, folder = saved_teacher_folder(tmp_path, small_tokenizer)
    teacher = loader(folder)
    assert (teacher.name, teacher.kind) == (kind, kind)
    assert loader(folder, name="big").name == "big"
    ids = np.array([small_tokenizer.encode("the cat sat on the mat")])
    assert teacher.tokenizer.encode("the cat sat on the mat") == ids[0].tolist()
    logits, hidden = teacher.forward(ids, hidden_layers=(2,))
    assert np.allclose(logits, model.forward(ids), atol=1e-6)
    assert np.allclose(hidden[2], model.hidden_states[2], atol=1e-6)


def test_transformers_llama_folder_gives_the_same_hidden_states(tmp_path):
    """Outside reference for the layer numbering: transformers' output_hidden_states is
    [embeddings, block 1, ..., block L-1, final norm(block L)], ours has block L un-normed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=24,
                                      max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    teacher = load_llama_teacher(tmp_path, dtype=np.float64)
    assert (teacher.num_layers, teacher.hidden_size, teacher.vocab_size, teacher.tokenizer) == (3, 16, 50, None)
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 7))
    logits, hidden = teacher.forward(ids, hidden_layers=(0, 1, 2))
    with torch.no_grad():
        out = hf(torch.tensor(ids), output_hidden_states=True)
    assert np.allclose(logits, out.logits.double().numpy(), atol=1e-5)
    for i in (0, 1, 2):
        assert np.allclose(hidden[i], out.hidden_states[i].double().numpy(), atol=1e-5)


def test_checkpoint_without_tokenizer_shares_the_students(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    assert load_minillm_teacher(tmp_path / "m").tokenizer is None


@pytest.mark.parametrize("loader", [load_llama_teacher, load_minillm_teacher])
def test_not_a_checkpoint_is_one_line(tmp_path, loader):
    (tmp_path / "empty").mkdir()
    message = one_line_error(lambda: loader(tmp_path / "empty"), "is not a checkpoint: no config.json")
    assert "empty" in message
    one_line_error(lambda: loader(tmp_path / "missing"), "no config.json")


# ----------------------------------------------------------------------------- n-gram teacher

def reference_ngram_prob(stream, V, order, context, w):
    """Interpolated absolute discounting, straight from the formula, with dict counts."""
    if order == 1 or len(context) < order - 1:
        if order == 1:
            return (stream.count(w) + 1) / (len(stream) + V)
        return reference_ngram_prob(stream, V, order - 1, context, w)
    grams = Counter(tuple(stream[i:i + order]) for i in range(len(stream) - order + 1))
    n1 = sum(1 for c in grams.values() if c == 1)
    n2 = sum(1 for c in grams.values() if c == 2)
    D = n1 / (n1 + 2 * n2) if n1 else 0.5
    h = tuple(context[len(context) - order + 1:])
    following = {g[-1]: c for g, c in grams.items() if g[:-1] == h}
    lower = reference_ngram_prob(stream, V, order - 1, context, w)
    if not following:
        return lower
    total = sum(following.values())
    return max(following.get(w, 0) - D, 0) / total + D * len(following) / total * lower


def test_ngram_matches_reference_formula():
    rng = np.random.default_rng(0)
    V, order = 6, 3
    stream = rng.integers(0, V, size=80).tolist() + [0, 1, 2] * 5
    teacher = NGramTeacher(V, order=order, dtype=np.float64).fit(np.array(stream))
    ids = np.array([[0, 1, 2, 0, 5], rng.integers(0, V, size=5).tolist()])
    logits, hidden = teacher.forward(ids)
    assert hidden == {} and logits.shape == (2, 5, V)
    for b in range(2):
        for t in range(5):
            expected = [reference_ngram_prob(stream, V, order, ids[b, :t + 1].tolist(), w) for w in range(V)]
            assert np.allclose(np.exp(logits[b, t]), expected, rtol=1e-12)


def test_ngram_probabilities_sum_to_one_and_are_never_zero():
    rng = np.random.default_rng(1)
    teacher = NGramTeacher(500, order=4).fit(rng.integers(0, 50, size=3000))
    logits, _ = teacher.forward(rng.integers(0, 60, size=(3, 20)))
    probs = np.exp(logits.astype(np.float64))
    assert logits.dtype == np.float32
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert np.isfinite(logits).all() and (probs > 0).all()


def test_ngram_learns_a_deterministic_pattern():
    teacher = NGramTeacher(10, order=3).fit(np.array([0, 1, 2] * 50))
    probs = np.exp(teacher.forward(np.array([[0, 1, 2, 0]]))[0][0])
    assert probs[1, 2] > 0.9 and probs[2, 0] > 0.9 and probs[3, 1] > 0.9


def held_out_perplexity(teacher, ids):
    logits, _ = teacher.forward(ids[:, :-1])
    logp = np.take_along_axis(logits, ids[:, 1:, None], axis=-1)
    return float(np.exp(-logp.mean()))


def test_ngram_beats_uniform_on_held_out_text():
    data = np.frombuffer(SAMPLE.read_bytes(), dtype=np.uint8).astype(np.int64)   # bytes as tokens
    split = int(0.9 * len(data))
    held_out = data[split:split + 16 * 200].reshape(16, 200)
    perplexity = {n: held_out_perplexity(NGramTeacher(256, order=n).fit(data[:split]), held_out)
                  for n in (1, 3)}
    assert perplexity[3] < perplexity[1] < 256 / 4          # uniform over bytes: 256
    assert perplexity[3] < 10


def test_ngram_bad_use_is_one_line():
    one_line_error(lambda: NGramTeacher(30000, 5), "int64")
    one_line_error(lambda: NGramTeacher(10, 0), "order")
    teacher = NGramTeacher(10)
    with pytest.raises(RuntimeError, match="fit"):
        teacher.forward(np.zeros((1, 3), dtype=np.int64))
    one_line_error(lambda: teacher.fit(np.array([1, 12])), "[0, 10)")
    teacher.fit(np.arange(10))
    one_line_error(lambda: teacher.forward(np.zeros((1, 3), dtype=np.int64), (1,)), "no hidden states")
    one_line_error(lambda: teacher.forward(np.array([[3, 10]])), "outside")
    assert (teacher.kind, teacher.num_layers, teacher.hidden_size, teacher.tokenizer) == ("ngram", 0, None, None)


# ----------------------------------------------------------------------------- offline cache

def random_topk(rng, shape):
    return rng.integers(0, 100, size=shape).astype(np.int32), -rng.random(shape).astype(np.float32)


def test_cache_round_trip_and_reuse(tmp_path):
    rng = np.random.default_rng(0)
    cache = TeacherOutputCache(tmp_path / "c", "llama", k=4, temperature=2.0, num_sequences=5, seq_len=3,
                               fingerprint="abc")
    assert "new" in cache.message and not cache.has([0])
    ids, logprobs = random_topk(rng, (2, 3, 4))
    cache.put(np.array([3, 1]), ids, logprobs)
    assert cache.has([1, 3]) and not cache.has([1, 2])
    got_ids, got_logprobs = cache.get([1, 3])
    assert got_ids.dtype == np.int32 and got_logprobs.dtype == np.float32
    assert np.array_equal(got_ids, ids[::-1]) and np.array_equal(got_logprobs, logprobs[::-1])
    del cache
    again = TeacherOutputCache(tmp_path / "c", "llama", 4, 2.0, 5, 3, fingerprint="abc")
    assert "reusing 2/5" in again.message
    assert np.array_equal(again.get([3])[0], ids[:1])


@pytest.mark.parametrize("change, field", [
    (dict(k=8), "k"), (dict(temperature=1.0), "temperature"), (dict(fingerprint="xyz"), "fingerprint"),
    (dict(teacher_name="flux"), "teacher"), (dict(num_sequences=6), "num_sequences"),
])
def test_cache_starts_fresh_when_settings_change(tmp_path, change, field):
    settings = dict(teacher_name="llama", k=4, temperature=2.0, num_sequences=5, seq_len=3, fingerprint="abc")
    cache = TeacherOutputCache(tmp_path, **settings)
    cache.put([0], *random_topk(np.random.default_rng(0), (1, 3, 4)))
    fresh = TeacherOutputCache(tmp_path, **{**settings, **change})
    assert f"{field} changed, starting fresh" in fresh.message
    assert not fresh.has([0])


def test_cache_bad_use_is_one_line(tmp_path):
    cache = TeacherOutputCache(tmp_path, "t", 2, 1.0, num_sequences=3, seq_len=4)
    one_line_error(lambda: cache.put([0], *random_topk(np.random.default_rng(0), (1, 4, 3))), "(1, 4, 2)")
    one_line_error(lambda: cache.get([1]), "sequence 1 is not stored")
    one_line_error(lambda: cache.has([3]), "0..2")
    one_line_error(lambda: TeacherOutputCache(tmp_path, "t", 0, 1.0, 3, 4), "k must be")
    one_line_error(lambda: TeacherOutputCache(tmp_path, "t", 2, 0.0, 3, 4), "temperature")
    one_line_error(lambda: TeacherOutputCache(tmp_path, "t", 2, 1.0, 0, 4), "num_sequences >= 1")


def test_cache_stores_what_it_is_given_and_reads_it_back(tmp_path):
    """put -> has -> get returns the teacher's top-k as stored; a new cache on the same folder and
    settings reuses the stored rows (what KnowledgeTransfer.cached_term relies on)."""
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 20, size=(6, 9))
    teacher = NGramTeacher(20, order=2).fit(seqs.reshape(-1))
    settings = dict(k=5, temperature=2.0, num_sequences=6, seq_len=8,
                    fingerprint=sequences_fingerprint(seqs))
    cache = TeacherOutputCache(tmp_path, "ngram", **settings)
    indices = np.array([4, 0])
    assert not cache.has(indices)
    expected = teacher_topk(teacher.forward(seqs[indices, :-1])[0], 5, 2.0)
    cache.put(indices, *expected)
    assert cache.has(indices) and not cache.has(np.array([1]))
    again = TeacherOutputCache(tmp_path, "ngram", **settings)
    assert "reusing 2/6" in again.message
    ids, logprobs = again.get(indices)
    assert np.array_equal(ids, expected[0]) and np.allclose(logprobs, expected[1])


def test_fingerprint_tells_sequences_apart():
    a = np.arange(12).reshape(3, 4)
    assert sequences_fingerprint(a) == sequences_fingerprint(a.copy())
    assert sequences_fingerprint(a) != sequences_fingerprint(a.reshape(4, 3))
    assert sequences_fingerprint(a) != sequences_fingerprint(a + (a == 11))


# ----------------------------------------------------------------------------- specs and maps

@pytest.mark.parametrize("spec, expected", [
    ("llama:models/tiny", ("llama", "models/tiny", 1.0)),
    ("Mistral:/abs/path:0.25", ("llama", "/abs/path", 0.25)),
    ("minillm:out/ckpt:2", ("minillm", "out/ckpt", 2.0)),
    ("flux:out/ckpt:0", ("minillm", "out/ckpt", 0.0)),        # flux: the kind's older name
    ("qwen2:models/qwen:0.5", ("qwen2", "models/qwen", 0.5)),
    ("ngram", ("ngram", "", 1.0)),
    ("ngram::0.5", ("ngram", "", 0.5)),
    ("ngram:data/corpus.txt", ("ngram", "data/corpus.txt", 1.0)),
    ("ngram:0.5", ("ngram", "", 0.5)),
    ("llama=C:/models/tiny:v2", ("llama", "C:/models/tiny:v2", 1.0)),
])
def test_parse_teacher_spec(spec, expected):
    assert parse_teacher_spec(spec) == expected


@pytest.mark.parametrize("spec, expected", [
    ("gpt:path", "minillm, llama, mistral, qwen2, qwen3, ngram, flux"),
    ("", "unknown kind"),
    ("llama:path:-1", "finite number >= 0"),
    ("llama:path:nan", "finite number >= 0"),
    ("llama:path:heavy", "'heavy' is not a number"),
    ("llama", "needs a path"),
    ("flux::0.5", "needs a path"),
])
def test_parse_teacher_spec_errors(spec, expected):
    one_line_error(lambda: parse_teacher_spec(spec), expected)


@pytest.mark.parametrize("teacher_layers, student_layers, expected", [
    (12, 4, {3: 1, 6: 2, 9: 3, 12: 4}),
    (6, 6, {i: i for i in range(1, 7)}),
    (2, 4, {1: 2, 2: 4}),
    (5, 3, {2: 1, 3: 2, 5: 3}),
    (32, 1, {32: 1}),
    (0, 4, {}),
])
def test_auto_layer_map(teacher_layers, student_layers, expected):
    assert auto_layer_map(teacher_layers, student_layers) == expected


def test_parse_layer_map():
    assert parse_layer_map('{"llama": {"8": 1, "16": 2}}', "llama", 16, 4) == {8: 1, 16: 2}
    assert parse_layer_map({"llama": {8: "1"}}, "llama", 16, 4) == {8: 1}
    assert parse_layer_map('{"flux": {"2": 1}}', "llama", 12, 4) == auto_layer_map(12, 4)
    assert parse_layer_map(None, "llama", 12, 4) == auto_layer_map(12, 4)
    assert parse_layer_map('{"llama": {}}', "llama", 12, 4) == {}


@pytest.mark.parametrize("spec, expected", [
    ('{"llama": {"17": 1}}', "teacher layer 17 does not exist"),
    ('{"llama": {"8": 5}}', "student layer 5 does not exist"),
    ('{"llama": {"x": 1}}', "teacher layer 'x' is not an integer"),
    ('{"llama": {"8": 1.5}}', "student layer 1.5 is not an integer"),
    ('{"llama": [8, 1]}', "must be an object"),
    ('{"llama": {"8": 1}', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
])
def test_parse_layer_map_errors(spec, expected):
    one_line_error(lambda: parse_layer_map(spec, "llama", 16, 4), expected)


def test_check_vocab():
    teacher = NGramTeacher(500, order=2, name="big")
    check_vocab(teacher, 500)
    check_vocab(teacher, 300, token_level=False)
    message = one_line_error(lambda: check_vocab(teacher, 300), "--tokenizer_path")
    assert "ULD" in message and "big" in message and "500" in message


def test_padded_embedding_rows_are_dropped_and_said_once(tmp_path):
    """A teacher with more embedding rows than tokens (published checkpoints pad the vocabulary)
    teaches a student of the real vocabulary: the extra rows are dropped, its distribution is the
    softmax over the real tokens, and one notice says so. Fewer rows than tokens: refused."""
    V, padded = 40, 48
    config = TransformerConfig(vocab_size=padded, hidden_size=16, num_layers=1, num_heads=2,
                               num_kv_heads=2, intermediate_size=32, max_seq_length=16)
    teacher = TransformerTeacher("padded", "minillm", MiniTransformer(config, seed=1, dtype=np.float64))
    student = MiniTransformer(dataclasses.replace(config, vocab_size=V), seed=2, dtype=np.float64)
    notices = []
    check_vocab(teacher, V, notice=notices.append)
    assert teacher.vocab_size == V and len(notices) == 1
    assert "48 embedding rows for 40 tokens" in notices[0] and "8 rows" in notices[0]
    ids = np.random.default_rng(0).integers(0, V, size=(2, 9))
    logits, _ = teacher.forward(ids)
    full = teacher.model.forward(ids, keep_cache=False)
    assert logits.shape == (2, 9, V) and np.array_equal(logits, full[..., :V])
    distiller = KnowledgeTransfer(student, [(teacher, 1.0)], DistillConfig())   # links without error
    logits_s = student.forward(ids)
    terms = distiller.losses(ids, None, logits_s, student.hidden_states)
    assert np.isfinite(terms.total) and terms.dlogits.shape == (2, 9, V)
    small = TransformerTeacher("small", "minillm", MiniTransformer(dataclasses.replace(config, vocab_size=32)))
    one_line_error(lambda: check_vocab(small, V, notice=notices.append), "32", "40")
