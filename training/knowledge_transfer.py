"""The knowledge-transfer system: one student, any number of teachers, one training step.

    total = ce_weight · CE(labels)
          + Σ_teachers weight_t · ( kl_weight · KL_t                 (or ULD_t across vocabularies)
                                  + hidden_weight · hidden_t        (projected hidden states)
                                  + contrastive_weight · InfoNCE_t )

A step: every teacher's forward (inference only, or its cached top-k), the student's forward,
the losses, their backwards into d(logits) and d(hidden state)s, the student's backward with
those (`backward(dlogits, hidden_grads)`), the projections' gradients, then (in `apply`) the
optimizer step. The losses themselves are in training/losses.py; the teachers in teachers.py.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mini_llm import backend
from mini_llm.model import layers
from mini_llm.optim import AdamW, clip_grad_norm
from training import losses
from training.teachers import check_vocab, parse_layer_map, same_tokenizer


@dataclass
class DistillConfig:
    # defaults measured with benchmarks/distillation.py: ce 0.2 / kl 0.8 at tau 1 closed 82% of
    # the scratch->teacher perplexity gap in 300 steps; ce 1 / kl 1 at tau 2 ended worse than scratch
    ce_weight: float = 0.2              # cross-entropy on the real next tokens
    kl_weight: float = 0.8              # KL to each teacher's softened distribution
    hidden_weight: float = 0.0          # hidden-state matching through learned projections
    contrastive_weight: float = 0.0     # InfoNCE on the same projected states
    temperature: float = 1.0            # tau: softens both distributions; KL is scaled by tau²
    kl_direction: str = "forward"       # "forward" KL(t‖s), mean-seeking; "reverse" KL(s‖t), mode-seeking
    hidden_loss: str = "mse"            # "mse" or "cosine"
    contrastive_temperature: float = 0.1
    cross_vocab: bool = False           # teachers with another vocabulary contribute through ULD
    layer_map: Optional[str] = None     # JSON {"teacher": {"teacher layer": student layer}}; None = auto

    def validate(self):
        for name in ("ce_weight", "kl_weight", "hidden_weight", "contrastive_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "contrastive_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"--kl_direction must be forward or reverse, got {self.kl_direction!r}")
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(f"--hidden_loss must be mse or cosine, got {self.hidden_loss!r}")
        return self


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
    """Runs distillation steps. Holds the student, the teacher links, the projection matrices
    (their own parameters: `proj_params`, `proj_grads`) and one AdamW over both."""

    def __init__(self, student, teachers, config, student_tokenizer=None, lr=3e-4,
                 weight_decay=0.1, grad_clip=1.0, seed=0):
        """teachers: list of (teacher, weight)."""
        self.student, self.config = student, config.validate()
        self.tokenizer, self.grad_clip = student_tokenizer, grad_clip
        self.links = [self.link(t, w) for t, w in teachers]
        self.proj_params = self.init_projections(seed)
        self.proj_grads = {n: backend.xp().zeros_like(p) for n, p in self.proj_params.items()}
        self.optimizer = AdamW({**student.params, **self.proj_params}, lr=lr, weight_decay=weight_decay)

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

    # ----- one micro-batch: forward, losses, backward (gradients accumulate) --------------

    def accumulate(self, batch, indices=None, scale=1.0):
        """batch (b, T+1) token ids: inputs batch[:, :-1], targets batch[:, 1:]. Adds scale ·
        d(total)/d(param) into the student's and projections' grads; returns every component."""
        cfg, student = self.config, self.student
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = student.forward(inputs)                                   # (b, T, V)
        ce, ce_cache = layers.cross_entropy_forward(logits, backend.to_device(targets))
        dlogits = layers.cross_entropy_backward(cfg.ce_weight * scale, ce_cache)
        parts = {"ce": float(ce)}
        total = cfg.ce_weight * float(ce)
        hidden_grads = {}
        for link in self.links:
            t_parts, d_student_logits = self.teacher_losses(link, inputs, indices, logits, hidden_grads, scale)
            for name, value in t_parts.items():
                parts[f"{name}.{link.teacher.name}"] = value
                total += link.weight * getattr(cfg, f"{name}_weight") * value
            dlogits = dlogits + d_student_logits
        student.backward(dlogits, hidden_grads=hidden_grads)
        parts["total"] = total
        return parts

    def teacher_losses(self, link, inputs, indices, student_logits, hidden_grads, scale):
        """The losses against one teacher. Returns ({"kl": .., "hidden": .., "contrastive": ..},
        d(those, weighted)/d(student logits)); hidden-state gradients go into hidden_grads."""
        cfg, teacher = self.config, link.teacher
        w_kl = link.weight * cfg.kl_weight * scale
        parts = {}
        if not link.same_tokens:                                  # another tokenizer: ULD
            t_logits, mask = self.retokenized_teacher_logits(link, inputs)
            parts["kl"], cache = losses.uld_forward(student_logits, t_logits, cfg.temperature, mask)
            return parts, losses.uld_backward(w_kl, cache)
        need_teacher = link.cache is None or link.layer_map or not link.cache.has(indices)
        t_logits, t_hidden = (teacher.forward(inputs, hidden_layers=tuple(link.layer_map))
                              if need_teacher else (None, {}))
        if link.cache is not None:                                # offline: cached top-k
            topk_ids, topk_logprobs = self.cached_topk(link, indices, t_logits)
            parts["kl"], cache = losses.topk_kl_forward(student_logits, topk_ids, topk_logprobs,
                                                       cfg.temperature)
            d_logits = losses.topk_kl_backward(w_kl, cache)
        else:
            parts["kl"], cache = losses.kl_forward(student_logits, backend.to_device(t_logits),
                                                  cfg.temperature, cfg.kl_direction)
            d_logits = losses.kl_backward(w_kl, cache)
        if link.layer_map:
            parts.update(self.hidden_losses(link, t_hidden, hidden_grads, scale))
        return parts, d_logits

    def cached_topk(self, link, indices, t_logits):
        if not link.cache.has(indices):
            ids, logprobs = losses.teacher_topk(backend.to_device(t_logits), link.cache.k,
                                                link.cache.meta["temperature"])
            link.cache.put(indices, ids, logprobs)
        ids, logprobs = link.cache.get(indices)
        return backend.to_device(ids.astype(np.int64)), backend.to_device(logprobs.astype(self.student.dtype))

    def hidden_losses(self, link, t_hidden, hidden_grads, scale):
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
                value, cache = forward_fn(s_h, proj_w, t_h)
                hidden += value / len(pairs)
                self.add_hidden_grads(name, s_layer, hidden_grads,
                                      backward_fn(link.weight * cfg.hidden_weight * scale / len(pairs), cache))
            if cfg.contrastive_weight > 0:
                value, cache = losses.contrastive_forward(s_h, proj_w, t_h, cfg.contrastive_temperature)
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

    # ----- the optimizer step ------------------------------------------------------------

    def apply(self, lr):
        """Clip the global gradient norm (student + projections), take one AdamW step, zero the
        grads. Returns the norm before clipping."""
        grads = {**self.student.grads, **self.proj_grads}
        norm = clip_grad_norm(grads, self.grad_clip)
        self.optimizer.step({**self.student.params, **self.proj_params}, grads, lr=lr)
        self.student.zero_grad()
        for g in self.proj_grads.values():
            g[...] = 0
        return norm
