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
from training import hidden_losses, losses
from training.teacher_specs import parse_layer_map
from training.teachers import check_vocab, same_tokenizer

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
    parts: dict          # unweighted values by name: {"kl.ngram": .., "hidden.llama": .., "uld.qwen": ..}
    total: float         # Σ_t weight_t · Σ_terms term_weight · value  (what the loss adds)
    dlogits: object      # scale · d(total)/d(student logits)            (b, T, V)
    hidden_grads: dict   # {student hidden index: scale · d(total)/d(hidden state) (b, T, C)}


class TeacherTerms(NamedTuple):
    """One teacher's share of DistillTerms, plus its projections' gradients."""
    parts: dict          # unweighted values: {"kl" or "uld": .., "hidden": .., "contrastive": ..}
    total: float         # weight_t · Σ_terms term_weight · value
    dlogits: object      # scale · d(total)/d(student logits)            (b, T, V)
    hidden_grads: dict   # {student hidden index: scale · d(total)/d(hidden state)}
    proj_grads: dict     # {projection name: scale · d(total)/d(projection)}


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

    def losses(self, inputs, indices, student_logits, student_hidden, scale=1.0, mask=None,
               sampled=None):
        """The teachers' terms for one micro-batch, after the student's forward on `inputs`
        (b, T) gave `student_logits` (b, T, V) and `student_hidden` (its hidden_states list).
        `indices` (b,) name the training sequences (for the offline cache; None for sequences
        not in the training data). `mask` (b, T): the positions that count (None = all).
        `sampled`: (tokens, sampling_probs) of a MiniLLM batch, whose logit term is then the
        policy-gradient surrogate (losses.minillm_forward) in place of the KL. Adds scale ·
        d(total)/d(projection) into proj_grads (the projections' accumulated gradients) and
        returns DistillTerms with scale · d(total)/d(logits, hidden states)."""
        parts, total = {}, 0.0
        dlogits, hidden_grads = backend.xp().zeros_like(student_logits), {}
        for link in self.links:
            terms = self.teacher_terms(link, inputs, indices, student_logits, student_hidden,
                                       scale, mask, sampled)
            parts.update({f"{name}.{link.teacher.name}": v for name, v in terms.parts.items()})
            total += terms.total
            dlogits += terms.dlogits
            for s_layer, d_hidden in terms.hidden_grads.items():
                hidden_grads[s_layer] = hidden_grads.get(s_layer, 0) + d_hidden
            for name, d_proj in terms.proj_grads.items():
                self.proj_grads[name] += d_proj
        return DistillTerms(parts, total, dlogits, hidden_grads)

    def teacher_terms(self, link, inputs, indices, student_logits, student_hidden, scale,
                      mask=None, sampled=None):
        """One teacher's contribution: its logit term through one of the three regimes (live,
        cached top-k, other vocabulary), then hidden-state matching at the mapped layers.
            total = weight_t · (kl_weight · logit_term + hidden_weight · hidden
                                + contrastive_weight · contrastive)"""
        cfg = self.config
        w_logits = link.weight * cfg.kl_weight * scale          # d(total · scale)/d(logit_term)
        t_hidden = {}
        if not link.same_tokens:
            name, value, dlogits = self.cross_vocab_term(link, inputs, student_logits, mask, w_logits)
        else:
            need_teacher = link.cache is None or link.layer_map or not link.cache.has(indices)
            t_logits, t_hidden = (link.teacher.forward(inputs, hidden_layers=tuple(link.layer_map))
                                  if need_teacher else (None, {}))
            if link.cache is not None:
                name, value, dlogits = self.cached_term(link, indices, t_logits, student_logits,
                                                        mask, w_logits)
            else:
                name, value, dlogits = self.live_term(t_logits, student_logits, mask, sampled,
                                                      w_logits)
        parts, hidden_grads, proj_grads = {name: value}, {}, {}
        total = link.weight * cfg.kl_weight * value
        if link.layer_map:
            hidden_parts, hidden_grads, proj_grads = self.hidden_terms(link, t_hidden, student_hidden,
                                                                       scale, mask)
            parts.update(hidden_parts)
            total += link.weight * (cfg.hidden_weight * hidden_parts.get("hidden", 0.0)
                                    + cfg.contrastive_weight * hidden_parts.get("contrastive", 0.0))
        return TeacherTerms(parts, total, dlogits, hidden_grads, proj_grads)

    # ----- the three regimes of a teacher's logit term: (name, value, w · d(value)/d(logits))

    def live_term(self, t_logits, student_logits, mask, sampled, w):
        """A teacher run on the batch: KL in the configured direction, the generalized JSD
        (--jsd_beta), or on a MiniLLM batch the policy-gradient surrogate of the reverse KL."""
        cfg, t_logits = self.config, backend.to_device(t_logits)
        if sampled is not None:
            tokens, sampling_probs = sampled
            value, cache = losses.minillm_forward(student_logits, t_logits, tokens,
                                                  backend.to_device(sampling_probs), mask)
            return "kl", value, losses.minillm_backward(w, cache)
        if cfg.jsd_beta is not None:
            value, cache = losses.jsd_forward(student_logits, t_logits, cfg.jsd_beta,
                                              cfg.temperature, mask)
            return "kl", value, losses.jsd_backward(w, cache)
        value, cache = losses.kl_forward(student_logits, t_logits, cfg.temperature,
                                         cfg.kl_direction, mask)
        return "kl", value, losses.kl_backward(w, cache)

    def cached_term(self, link, indices, t_logits, student_logits, mask, w):
        """Offline KD: the forward KL to the teacher's top-k stored in link.cache (filled from
        t_logits the first time a sequence is seen)."""
        cache = link.cache
        if not cache.has(indices):
            ids, logprobs = losses.teacher_topk(backend.to_device(t_logits), cache.k,
                                                cache.meta["temperature"])
            cache.put(indices, ids, logprobs)
        ids, logprobs = cache.get(indices)
        topk_ids = backend.to_device(ids.astype(np.int64))                  # (b, T, k)
        topk_logprobs = backend.to_device(logprobs.astype(student_logits.dtype))
        value, kl_cache = losses.topk_kl_forward(student_logits, topk_ids, topk_logprobs,
                                                 self.config.temperature, mask)
        return "kl", value, losses.topk_kl_backward(w, kl_cache)

    def cross_vocab_term(self, link, inputs, student_logits, mask, w):
        """A teacher with its own tokenizer: ULD over the positions both sequences have."""
        t_logits, both = self.retokenized_teacher_logits(link, inputs)
        if mask is not None:
            both = both * backend.to_device(mask)
        value, cache = losses.uld_forward(student_logits, t_logits, self.config.temperature, both)
        return "uld", value, losses.uld_backward(w, cache)

    # ----- hidden states -----------------------------------------------------------------

    def hidden_terms(self, link, t_hidden, student_hidden, scale, mask=None):
        """Hidden-state matching and InfoNCE at each mapped (teacher layer, student layer)
        pair, averaged over the pairs. Returns (parts, {student layer: d/d(hidden)},
        {projection name: d/d(projection)}), the gradients weighted and scaled."""
        cfg, pairs = self.config, link.layer_map.items()
        match_forward, match_backward = {
            "mse": (hidden_losses.hidden_mse_forward, hidden_losses.hidden_mse_backward),
            "cosine": (hidden_losses.hidden_cosine_forward, hidden_losses.hidden_cosine_backward)}[cfg.hidden_loss]
        w_hidden = link.weight * cfg.hidden_weight * scale / len(pairs)
        w_contrastive = link.weight * cfg.contrastive_weight * scale / len(pairs)
        parts = {"hidden": 0.0} if cfg.hidden_weight > 0 else {}
        if cfg.contrastive_weight > 0:
            parts["contrastive"] = 0.0
        hidden_grads, proj_grads = {}, {}
        for t_layer, s_layer in pairs:
            name = link.proj_name(t_layer, s_layer)
            s_h, proj_w = student_hidden[s_layer], self.proj_params[name]
            t_h = backend.to_device(t_hidden[t_layer]).astype(s_h.dtype)
            grads = []                               # (d student hidden, d projection) per term
            if cfg.hidden_weight > 0:
                value, cache = match_forward(s_h, proj_w, t_h, mask)
                parts["hidden"] += value / len(pairs)
                grads.append(match_backward(w_hidden, cache))
            if cfg.contrastive_weight > 0:
                value, cache = hidden_losses.contrastive_forward(s_h, proj_w, t_h,
                                                          cfg.contrastive_temperature, mask)
                parts["contrastive"] += value / len(pairs)
                grads.append(hidden_losses.contrastive_backward(w_contrastive, cache))
            for d_hidden, d_proj in grads:
                hidden_grads[s_layer] = hidden_grads.get(s_layer, 0) + d_hidden
                proj_grads[name] = proj_grads.get(name, 0) + d_proj
        return parts, hidden_grads, proj_grads

    # ----- another vocabulary ------------------------------------------------------------

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
