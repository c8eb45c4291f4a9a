"""Long-context evaluation: perplexity vs length, passkey, needle in a haystack (strict and
lenient scorers), a RULER-style synthetic suite, plots, report.

Every evaluator takes a causal model callable `model(tokens_BT, positions_BT) -> logits_BTV`
(or an NNX module, or an `EvalModel` wrapping either) and a `longctx_jax.data.Tokenizer`.
"""

from longctx_jax.eval.needle import needle_example, needle_sweep
from longctx_jax.eval.passkey import passkey_example, passkey_sweep
from longctx_jax.eval.perplexity import perplexity_sweep, strided_nll, strided_perplexity_sweep
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.ruler import ruler_example, ruler_sweep
from longctx_jax.eval.scoring import EvalModel, answers_match
from longctx_jax.eval.suite import SuiteSpec, evaluate_checkpoint, evaluate_method, finalize

__all__ = [
    "EvalModel",
    "ResultStore",
    "SuiteSpec",
    "answers_match",
    "evaluate_checkpoint",
    "evaluate_method",
    "finalize",
    "needle_example",
    "needle_sweep",
    "passkey_example",
    "passkey_sweep",
    "perplexity_sweep",
    "ruler_example",
    "ruler_sweep",
    "strided_nll",
    "strided_perplexity_sweep",
]
