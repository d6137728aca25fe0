"""Real teacher families end to end: `python train.py --teacher qwen2:FOLDER` (and qwen3) on a
folder written by `transformers` and `tokenizers` themselves, as a user would download one.

The folder holds a tiny random Qwen2ForCausalLM / Qwen3ForCausalLM (saved by save_pretrained)
with a padded vocabulary (8 embedding rows more than the tokenizer has tokens, as published
checkpoints pad theirs), and a Qwen2-style byte-level tokenizer.json trained by `tokenizers`.
Two ways to learn from it: its tokenizer as the student's (--tokenizer_path: token-level KL over
the real tokens, the padded rows dropped), and the student's own tokenizer (--cross_vocab: ULD).
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.test_tokenizer_spm import hf_qwen2
from tests.test_train_cli import SAMPLE, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

PAD_ROWS = 8


def teacher_folder(folder, family):
    """A tiny random `family` model and its tokenizer.json, written by Hugging Face libraries."""
    texts = SAMPLE.read_text(encoding="utf-8").split("\n\n")
    tokenizer = hf_qwen2(texts)
    n_tokens = 1 + max(*tokenizer["model"]["vocab"].values(), *(t["id"] for t in tokenizer["added_tokens"]))
    config_cls, model_cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                             "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[family]
    config = config_cls(vocab_size=n_tokens + PAD_ROWS, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=64, tie_word_embeddings=True, head_dim=16)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(folder)
    (Path(folder) / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return folder, n_tokens


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_a_transformers_teacher_teaches_with_its_own_tokenizer(family, tmp_path):
    folder, n_tokens = teacher_folder(tmp_path / family, family)
    code, printed = run_cli(SAMPLE, tmp_path / "out", "--teacher", f"{family}:{folder}",
                            "--tokenizer_path", folder, "--vocab_size", n_tokens, "--max_steps", 3)
    assert code == 0
    assert f"teacher {family}: {n_tokens + PAD_ROWS} embedding rows for {n_tokens} tokens" in printed
    rows = metrics(tmp_path / "out")
    assert len(rows) == 3 and all(math.isfinite(r[f"kl.{family}"]) and r[f"kl.{family}"] > 0 for r in rows)
    assert f"teacher {family}" in printed.split("val perplexity")[1]   # same tokens: comparable


def test_a_transformers_teacher_teaches_across_vocabularies(tmp_path):
    folder, _ = teacher_folder(tmp_path / "qwen2", "qwen2")
    code, printed = run_cli(SAMPLE, tmp_path / "out", "--teacher", f"qwen2:{folder}", "--cross_vocab",
                            "--max_steps", 3)
    assert code == 0
    rows = metrics(tmp_path / "out")
    assert all(math.isfinite(r["uld.qwen2"]) and r["uld.qwen2"] > 0 for r in rows)


def test_a_teacher_whose_tokenizer_adds_bos_reads_it_first(tmp_path):
    """A Llama-2-style folder: SentencePiece BPE whose post-processor puts <s> first. The teacher
    reads [<s>] + ids and its first output is dropped, so position t still predicts token t + 1;
    the run says so, and the student's own sequences get no <s>."""
    from tests.test_tokenizer_spm import hf_spm
    from training.teachers import load_llama_teacher
    texts = SAMPLE.read_text(encoding="utf-8").split("\n\n")
    data = hf_spm(texts, "legacy")
    bos = data["model"]["vocab"]["<s>"]
    data["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}}}
    n_tokens = 1 + max(*data["model"]["vocab"].values(), *(t["id"] for t in data["added_tokens"]))
    config = transformers.LlamaConfig(vocab_size=n_tokens, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    teacher = load_llama_teacher(folder)
    assert teacher.prefix_ids() == [bos]
    ids = np.array([teacher.tokenizer.encode("The student learns from the teacher.")])
    logits, hidden = teacher.forward(ids, hidden_layers=(1,))
    with torch.no_grad():
        hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
        out = hf(torch.tensor([[bos] + ids[0].tolist()]), output_hidden_states=True)
    np.testing.assert_allclose(logits[0], out.logits[0, 1:].numpy(), atol=1e-4)
    np.testing.assert_allclose(hidden[1][0], out.hidden_states[1][0, 1:].numpy(), atol=1e-4)
    code, printed = run_cli(SAMPLE, tmp_path / "out", "--teacher", f"llama:{folder}",
                            "--tokenizer_path", folder, "--vocab_size", n_tokens, "--max_steps", 2)
    assert code == 0 and f"puts [{bos}] before every sequence" in printed
