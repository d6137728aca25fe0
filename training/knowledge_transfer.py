"""The knowledge-transfer terms: one student, any number of teachers, what they add to the loss.

    loss = ce_weight · CE(labels)                                   (training/loop.py)
         + Σ_teachers weight_t · ( kl_weight · KL_t                 (or ULD_t across vocabularies)
                                 + hidden_weight · hidden_t        (projected hidden states)
                                 + contrastive_weight · InfoNCE_t )  (this file)

The training loop (training/loop.py) owns the step: batch, student forward, cross-entropy,
then `KnowledgeTransfer.losses` for the teachers' terms, the student's backward, clip, AdamW.
This file only says what the teachers add: every teacher's forward (inference only, or its
cached top-k), the losses against the student's logits and hidden states, and their gradients:
d(loss)/d(student logits), d(loss)/d(student hidden states) at the mapped layers (handed to
`student.backward(dlogits, hidden_grads)`), and the gradients of the learned projections,
which are parameters of their own (`proj_params`, `proj_grads`). The loss functions themselves
are in training/losses.py; the teachers in teachers.py.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from mini_llm import backend
from training import losses
from training.teachers import check_vocab, parse_layer_map, same_tokenizer

# The cross-entropy weight when a teacher is given (plain training uses 1). Measured with
# benchmarks/distillation.py: ce 0.2 / kl 0.8 at tau 1 closed ~80% of the scratch->teacher
# perplexity gap in 300 steps; ce 1 / kl 1 at tau 2 ended worse than scratch.
DISTILL_CE_WEIGHT = 0.2


@dataclass
class DistillConfig:
    kl_weight: float = 0.8              # KL to each teacher's softened distribution
    hidden_weight: float = 0.0          # hidden-state matching through learned projections
    contrastive_weight: float = 0.0     # InfoNCE on the same projected states
    temperature: float = 1.0            # tau: softens both distributions; KL is scaled by tau²
    kl_direction: str = "forward"       # "forward" KL(t‖s), mean-seeking; "reverse" KL(s‖t), mode-seeking
    jsd_beta: Optional[float] = None    # set: generalized JSD(beta) (GKD) in place of the KL; 0 / 1 = the KLs
    hidden_loss: str = "mse"            # "mse" or "cosine"
    contrastive_temperature: float = 0.1
    cross_vocab: bool = False           # teachers with another vocabulary contribute through ULD
    layer_map: Optional[str] = None     # JSON {"teacher": {"teacher layer": student layer}}; None = auto

    def validate(self):
        for name in ("kl_weight", "hidden_weight", "contrastive_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "contrastive_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"--kl_direction must be forward or reverse, got {self.kl_direction!r}")
        if self.jsd_beta is not None and not 0 <= self.jsd_beta <= 1:
            raise ValueError(f"--jsd_beta must lie in [0, 1], got {self.jsd_beta}")
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(f"--hidden_loss must be mse or cosine, got {self.hidden_loss!r}")
        return self


class DistillTerms(NamedTuple):
    """What the teachers add to one micro-batch's loss (see KnowledgeTransfer.losses)."""
    parts: dict          # unweighted values by name: {"kl.ngram": .., "hidden.llama": .., ...}
    total: float         # Σ_t weight_t · Σ_terms term_weight · value  (what the loss adds)
    dlogits: object      # scale · d(total)/d(student logits)            (b, T, V)
    hidden_grads: dict   # {student hidden index: scale · d(total)/d(hidden state) (b, T, C)}


class TeacherLink:
    """How one teacher is tied to the student: its weight, whether it shares the student's
    tokens (token-level KL) or needs re-tokenising (ULD), its layer map, and its cache."""

    def __init__(self, teacher, weight, same_tokens, layer_map):
        self.teacher, self.weight, self.same_tokens = teacher, weight, same_tokens
        self.layer_map = layer_map       # {teacher hidden index: student hidden index}
        self.cache = None                # a TeacherOutputCache, set by the caller for offline KD

    def proj_name(self, teacher_layer, student_layer):
        return f"proj.{self.teacher.name}.{teacher_layer}->{student_layer}"


class KnowledgeTransfer:
    """The teachers' side of a training step. Holds the teacher links and the projection
    matrices (parameters of their own: `proj_params`, with gradients in `proj_grads`, which the
    training loop's optimizer updates beside the student's)."""

    def __init__(self, student, teachers, config, student_tokenizer=None, seed=0):
        """teachers: list of (teacher, weight)."""
        self.student, self.config = student, config.validate()
        self.tokenizer = student_tokenizer
        self.links = [self.link(t, w) for t, w in teachers]
        self.proj_params = self.init_projections(seed)
        self.proj_grads = {n: backend.xp().zeros_like(p) for n, p in self.proj_params.items()}

    def link(self, teacher, weight):
        cfg, s_vocab = self.config, self.student.config.vocab_size
        same_tokens = teacher.tokenizer is None or (
            self.tokenizer is not None and same_tokenizer(teacher.tokenizer, self.tokenizer))
        check_vocab(teacher, s_vocab, token_level=same_tokens or not cfg.cross_vocab)
        if not (same_tokens or cfg.cross_vocab):
            raise ValueError(f"teacher {teacher.name} has its own tokenizer, different from the "
                             f"student's: pass it with --tokenizer_path, or use the cross-vocabulary "
                             f"(ULD) loss with --cross_vocab")
        layer_map = {}
        if teacher.num_layers:              # parsed even when unused, so a bad map fails early
            layer_map = parse_layer_map(cfg.layer_map, teacher.name, teacher.num_layers,
                                        self.student.config.num_layers)
        uses_hidden = cfg.hidden_weight > 0 or cfg.contrastive_weight > 0
        if not (uses_hidden and same_tokens):
            layer_map = {}
        return TeacherLink(teacher, weight, same_tokens, layer_map)

    def init_projections(self, seed):
        """One (C_teacher, C_student) matrix per mapped layer pair, N(0, 1/C_student)."""
        rng = np.random.default_rng(seed + 7919)
        cs, params = self.student.config.hidden_size, {}
        for link in self.links:
            for t_layer, s_layer in link.layer_map.items():
                w = rng.normal(0.0, cs ** -0.5, size=(link.teacher.hidden_size, cs))
                params[link.proj_name(t_layer, s_layer)] = backend.to_device(w.astype(self.student.dtype))
        return params

    def attach_cache(self, link, cache):
        """Offline distillation: `link`'s teacher is read from `cache` (a TeacherOutputCache of
        its top-k log-probabilities) instead of being run. The cache holds the target of the
        forward KL at one temperature, so both must match this config."""
        cfg = self.config
        if cfg.kl_direction != "forward" or cfg.jsd_beta not in (None, 0):
            raise ValueError("the offline top-k cache gives the forward KL only, not "
                             f"--kl_direction {cfg.kl_direction}" +
                             (f" with --jsd_beta {cfg.jsd_beta}" if cfg.jsd_beta is not None else ""))
        if cache.meta["temperature"] != cfg.temperature:
            raise ValueError(f"teacher cache at temperature {cache.meta['temperature']} cannot "
                             f"serve --temperature {cfg.temperature}")
        if not link.same_tokens:
            raise ValueError(f"teacher {link.teacher.name} has another vocabulary: its top-k "
                             "cannot be cached for the token-level KL")
        link.cache = cache

    # ----- one micro-batch: every teacher's terms and their gradients ---------------------

    def losses(self, inputs, indices, student_logits, scale=1.0, mask=None, sampled=None):
        """The teachers' terms for one micro-batch, after the student's forward on `inputs`
        (b, T) gave `student_logits` (b, T, V) and its hidden_states. `indices` (b,) name the
        training sequences (for the offline cache; None for sequences not in the training
        data). `mask` (b, T): the positions that count (None = all). `sampled`: (tokens,
        sampling_probs) of a MiniLLM batch, whose logit term is then the policy-gradient
        surrogate (losses.minillm_forward) in place of the KL. Adds scale ·
        d(total)/d(projection) into proj_grads and returns DistillTerms with scale ·
        d(total)/d(logits, hidden states)."""
        cfg = self.config
        parts, total = {}, 0.0
        dlogits, hidden_grads = backend.xp().zeros_like(student_logits), {}
        for link in self.links:
            t_parts, t_dlogits = self.teacher_losses(link, inputs, indices, student_logits,
                                                     hidden_grads, scale, mask, sampled)
            for name, value in t_parts.items():
                parts[f"{name}.{link.teacher.name}"] = value
                total += link.weight * getattr(cfg, f"{name}_weight") * value
            dlogits += t_dlogits
        return DistillTerms(parts, total, dlogits, hidden_grads)

    def teacher_losses(self, link, inputs, indices, student_logits, hidden_grads, scale, mask=None,
                       sampled=None):
        """The losses against one teacher. Returns ({"kl": .., "hidden": .., "contrastive": ..},
        d(those, weighted)/d(student logits)); hidden-state gradients go into hidden_grads."""
        cfg, teacher = self.config, link.teacher
        w_kl = link.weight * cfg.kl_weight * scale
        parts = {}
        if not link.same_tokens:                                  # another tokenizer: ULD
            t_logits, both = self.retokenized_teacher_logits(link, inputs)
            if mask is not None:
                both = both * backend.to_device(mask)
            parts["kl"], cache = losses.uld_forward(student_logits, t_logits, cfg.temperature, both)
            return parts, losses.uld_backward(w_kl, cache)
        need_teacher = link.cache is None or link.layer_map or not link.cache.has(indices)
        t_logits, t_hidden = (teacher.forward(inputs, hidden_layers=tuple(link.layer_map))
                              if need_teacher else (None, {}))
        if link.cache is not None:                                # offline: cached top-k
            topk_ids, topk_logprobs = self.cached_topk(link, indices, t_logits)
            parts["kl"], cache = losses.topk_kl_forward(student_logits, topk_ids, topk_logprobs,
                                                       cfg.temperature, mask)
            d_logits = losses.topk_kl_backward(w_kl, cache)
        elif sampled is not None:                                 # MiniLLM: sequence-level reverse KL
            tokens, sampling_probs = sampled
            parts["kl"], cache = losses.minillm_forward(student_logits, backend.to_device(t_logits), tokens,
                                                       backend.to_device(sampling_probs), mask)
            d_logits = losses.minillm_backward(w_kl, cache)
        elif cfg.jsd_beta is None:                                # live: KL in one direction
            parts["kl"], cache = losses.kl_forward(student_logits, backend.to_device(t_logits),
                                                  cfg.temperature, cfg.kl_direction, mask)
            d_logits = losses.kl_backward(w_kl, cache)
        else:                                                     # live: generalized JSD
            parts["kl"], cache = losses.jsd_forward(student_logits, backend.to_device(t_logits),
                                                   cfg.jsd_beta, cfg.temperature, mask)
            d_logits = losses.jsd_backward(w_kl, cache)
        if link.layer_map:
            parts.update(self.hidden_losses(link, t_hidden, hidden_grads, scale, mask))
        return parts, d_logits

    def cached_topk(self, link, indices, t_logits):
        if not link.cache.has(indices):
            ids, logprobs = losses.teacher_topk(backend.to_device(t_logits), link.cache.k,
                                                link.cache.meta["temperature"])
            link.cache.put(indices, ids, logprobs)
        ids, logprobs = link.cache.get(indices)
        return backend.to_device(ids.astype(np.int64)), backend.to_device(logprobs.astype(self.student.dtype))

    def hidden_losses(self, link, t_hidden, hidden_grads, scale, mask=None):
        """Hidden-state matching and InfoNCE at each mapped (teacher layer, student layer)
        pair, averaged over the pairs; gradients into hidden_grads and proj_grads."""
        cfg, pairs = self.config, link.layer_map.items()
        forward_fn, backward_fn = {
            "mse": (losses.hidden_mse_forward, losses.hidden_mse_backward),
            "cosine": (losses.hidden_cosine_forward, losses.hidden_cosine_backward)}[cfg.hidden_loss]
        hidden, contrastive = 0.0, 0.0
        for t_layer, s_layer in pairs:
            name = link.proj_name(t_layer, s_layer)
            s_h, proj_w = self.student.hidden_states[s_layer], self.proj_params[name]
            t_h = backend.to_device(t_hidden[t_layer]).astype(s_h.dtype)
            if cfg.hidden_weight > 0:
                value, cache = forward_fn(s_h, proj_w, t_h, mask)
                hidden += value / len(pairs)
                self.add_hidden_grads(name, s_layer, hidden_grads,
                                      backward_fn(link.weight * cfg.hidden_weight * scale / len(pairs), cache))
            if cfg.contrastive_weight > 0:
                value, cache = losses.contrastive_forward(s_h, proj_w, t_h, cfg.contrastive_temperature, mask)
                contrastive += value / len(pairs)
                self.add_hidden_grads(name, s_layer, hidden_grads, losses.contrastive_backward(
                    link.weight * cfg.contrastive_weight * scale / len(pairs), cache))
        parts = {}
        if cfg.hidden_weight > 0:
            parts["hidden"] = hidden
        if cfg.contrastive_weight > 0:
            parts["contrastive"] = contrastive
        return parts

    def add_hidden_grads(self, proj_name, s_layer, hidden_grads, grads):
        d_student_h, d_proj = grads
        hidden_grads[s_layer] = hidden_grads.get(s_layer, 0) + d_student_h
        self.proj_grads[proj_name] += d_proj

    def retokenized_teacher_logits(self, link, inputs):
        """A teacher with its own tokenizer reads the same text: decode the student's ids,
        encode with the teacher's tokenizer, pad/crop to T. ULD compares position by position
        over the positions both have (Boizard et al. align the two sequences the same way)."""
        T = inputs.shape[1]
        texts = [self.tokenizer.decode(row.tolist()) for row in backend.to_host(inputs)]
        t_ids = np.zeros((len(texts), T), dtype=np.int64)
        mask = np.zeros((len(texts), T))
        for b, text in enumerate(texts):
            ids = link.teacher.tokenizer.encode(text)[:T]
            t_ids[b, :len(ids)], mask[b, :len(ids)] = ids, 1.0
        logits, _ = link.teacher.forward(t_ids)
        return backend.to_device(logits), backend.to_device(mask)
