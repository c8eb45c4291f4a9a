"""One prefill per prompt, two retrieval scorers: strict teacher-forced match and lenient greedy.

For a prompt p and answer tokens a_1..a_A, `ContinuationScorer.score` runs the prompt through
the model ONCE and derives from that single pass

  strict   all_i argmax logits(p, a_1..a_{i-1}) == a_i        (teacher-forced exact match,
           the same quantity `scoring.answers_match` computes from a full forward), and
  greedy   g_1..g_G, the free greedy continuation of p (G = A + extra tokens),

which the sweeps turn into the papers' lenient scores on the decoded text (`first_integer`,
`lenient_match`). With a `Decoder` the prompt is prefilled into a KV cache of `capacity`
slots; the answer's teacher-forced logits are one `decode` of a_1..a_{A-1} against that cache
(not donated, so the cache survives) and the greedy tokens are single-token decode steps from
the same cache; both read the projection weights as `Generator`'s decode step does
(`generate.resolve_decode_layout`: on a CPU, `[out, in]` copies). Any other causal logits
callable (or an `EvalModel`) has no cache: the strict score is one full forward at `capacity`
and each greedy token one more full forward, which is correct but G times the work, meant for
tiny test models.

RoPE types whose frequencies depend on the sequence length ("dynamic", "longrope") see
`capacity` on both paths (the cache path rotates with the cache size, the full forward is
padded to it), so a caller that passes the requested length as capacity scores every method
at that length.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.eval.scoring import EvalModel, as_eval_model
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.generate import resolve_decode_layout, snapshot_split, split_for_decode
from longctx_jax.models.kv_cache import KVCache

_INTEGER = re.compile(r"\d+")


def _never(generated: list[int]) -> bool:
    del generated
    return False


def first_integer(text: str) -> str | None:
    """The first run of decimal digits in `text` (None if there is none)."""
    match = _INTEGER.search(text)
    return match.group(0) if match else None


def lenient_match(text: str, key: str) -> bool:
    """The papers' lenient passkey / needle score: the first integer of `text` equals `key`.

    (Landmark Attention's and LongLoRA's passkey evaluations parse the first number of the
    greedy output.) " 51234. Remember" and "is 51234" match key 51234; "512345" does not.
    """
    return first_integer(text) == key


@dataclasses.dataclass(frozen=True)
class Continuation:
    """What one prefill gave.

    Attributes:
      strict: every answer token was the teacher-forced argmax (False when no answer given).
      answer_hits: bool `[A]`, teacher-forced argmax == answer token at each answer position.
      generated: int32 `[G]`, the free greedy continuation of the prompt.
    """

    strict: bool
    answer_hits: np.ndarray
    generated: np.ndarray


class ContinuationScorer:
    """Strict answer match and greedy continuation of prompts, from one prefill each.

    Args:
      model: a `Decoder` (KV-cache path) or any causal `model(tokens_BT, positions_BT) ->
        logits_BTV` / NNX module / `EvalModel` (full-forward path).
    """

    def __init__(self, model):
        self.cached = isinstance(model, Decoder) and model.cfg.pattern.cacheable
        if self.cached:
            self.cfg = model.cfg
            graphdef, self.state = snapshot_split(model)
            # The greedy steps (one row) read the weights as `Generator` does: "auto" layout.
            self.decode_layout = resolve_decode_layout(model, 1)
            decode_graphdef, self.decode_state = split_for_decode(model, self.decode_layout,
                                                                  (graphdef, self.state))

            def prefill(state, prompt_1T, cache):
                logits, cache = nnx.merge(graphdef, state).prefill(prompt_1T, cache, last_only=True)
                return logits[:, -1], cache

            def force(state, answer_1A, cache):  # cache not donated: the greedy steps reuse it
                logits, _ = nnx.merge(decode_graphdef, state).decode(answer_1A, cache)
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)

            def step(state, token_11, cache):
                logits, cache = nnx.merge(decode_graphdef, state).decode(token_11, cache, last_only=True)
                return logits[:, -1], cache

            self._prefill = jax.jit(prefill)
            self._force = jax.jit(force)
            self._step = jax.jit(step, donate_argnums=(2,))
        else:
            em: EvalModel = as_eval_model(model)
            self._em = em

            def argmax_all(tokens_1T):
                positions = jnp.arange(tokens_1T.shape[1], dtype=jnp.int32)[None]
                return jnp.argmax(em.logits(tokens_1T, positions), axis=-1).astype(jnp.int32)

            self._argmax_all = jax.jit(argmax_all)

    def score(self, prompt: Sequence[int] | np.ndarray, answer: Sequence[int] | np.ndarray, *,
              new_tokens: int, capacity: int, stop: Callable[[list[int]], bool] | None = None
              ) -> Continuation:
        """Teacher-forced match of `answer` and `new_tokens` greedy tokens after `prompt`.

        Args:
          prompt: token ids `[P]`, P >= 1.
          answer: token ids `[A]` (may be empty: only the greedy continuation is computed).
          new_tokens: greedy tokens to generate, >= 1.
          capacity: the length the model runs at (cache slots, or the padded forward length);
            needs P + max(A, new_tokens) - 1 <= capacity.
          stop: called with the greedy ids so far after each one; True ends the generation
            early (e.g. on EOS, or once a monotone score can no longer change).

        Raises:
          ValueError: an empty prompt, new_tokens < 1, or a prompt and continuation that do
            not fit `capacity`.
        """
        prompt = np.asarray(prompt, np.int32)
        answer = np.asarray(answer, np.int32)
        P, A = len(prompt), len(answer)
        if P < 1 or prompt.ndim != 1 or answer.ndim != 1:
            raise ValueError(f"need a non-empty 1-D prompt and a 1-D answer, got shapes {prompt.shape}, "
                             f"{answer.shape}")
        if not isinstance(new_tokens, int | np.integer) or new_tokens < 1:
            raise ValueError(f"new_tokens must be an integer >= 1, got {new_tokens!r}")
        need = P + max(A, new_tokens) - 1
        if need > capacity:
            raise ValueError(f"prompt of {P} tokens + {max(A, new_tokens)} answer/generated tokens need "
                             f"{need} positions, more than capacity {capacity}")
        if self.cached:
            return self._score_cached(prompt, answer, new_tokens, capacity, stop or _never)
        return self._score_forward(prompt, answer, new_tokens, capacity, stop or _never)

    def _score_cached(self, prompt, answer, new_tokens, capacity, stop) -> Continuation:
        cfg = self.cfg
        cache = KVCache.create(num_layers=cfg.num_layers, batch=1, capacity=capacity,
                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
        logits, cache = self._prefill(self.state, jnp.asarray(prompt[None]), cache)
        first = int(jnp.argmax(logits[0]))
        hits = np.zeros((len(answer),), bool)
        if len(answer):
            predicted = [first]
            if len(answer) > 1:
                forced = self._force(self.decode_state, jnp.asarray(answer[None, :-1]), cache)
                predicted += np.asarray(forced)[0].tolist()
            hits = np.asarray(predicted) == answer
        generated = [first]
        while len(generated) < new_tokens and not stop(generated):
            logits, cache = self._step(self.decode_state, jnp.asarray([[generated[-1]]], jnp.int32), cache)
            generated.append(int(jnp.argmax(logits[0])))
        return Continuation(strict=bool(len(answer) and hits.all()), answer_hits=hits,
                            generated=np.asarray(generated, np.int32))

    def _score_forward(self, prompt, answer, new_tokens, capacity, stop) -> Continuation:
        P = len(prompt)

        def argmax_after(seq: np.ndarray) -> np.ndarray:
            padded = np.zeros((1, capacity), np.int32)
            padded[0, : len(seq)] = seq
            return np.asarray(self._argmax_all(jnp.asarray(padded)))[0]

        hits = np.zeros((len(answer),), bool)
        if len(answer):
            predicted = argmax_after(np.concatenate([prompt, answer[:-1]]))[P - 1 : P - 1 + len(answer)]
            hits = predicted == answer
        seq = prompt.tolist()
        while len(seq) < P + new_tokens and (len(seq) == P or not stop(seq[P:])):
            seq.append(int(argmax_after(np.asarray(seq, np.int32))[len(seq) - 1]))
        return Continuation(strict=bool(len(answer) and hits.all()), answer_hits=hits,
                            generated=np.asarray(seq[P:], np.int32))
