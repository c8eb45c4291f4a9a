"""Continual pre-training on long documents: keep only documents of at least N tokens.

Length extension recipes (Position Interpolation, YaRN, LongRoPE, "Effective Long-Context
Scaling", Xiong et al. 2023) fine-tune on data whose documents are long enough to fill the
new context: a window cut from a short document teaches nothing about long-range positions.
`config.data.min_doc_tokens = N` restricts the training documents to those of >= N tokens
(bos and eos included); the validation set is unchanged so runs stay comparable.
"""

import numpy as np

from longctx_jax.data import TokenizedDocs


def long_documents(docs: TokenizedDocs, min_tokens: int) -> TokenizedDocs:
    """The documents of `docs` with at least `min_tokens` tokens, in their original order.

    Raises:
      ValueError: `min_tokens` < 1, or no document is that long (the message gives the longest).
    """
    if min_tokens < 1:
        raise ValueError(f"data.min_doc_tokens must be >= 1, got {min_tokens}")
    lengths = np.diff(docs.starts)
    keep = np.flatnonzero(lengths >= min_tokens)
    if keep.size == 0:
        raise ValueError(f"data.min_doc_tokens={min_tokens} keeps no document; the longest has "
                         f"{int(lengths.max())} tokens")
    tokens = np.concatenate([docs.tokens[docs.starts[d]:docs.starts[d + 1]] for d in keep])
    starts = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
    return TokenizedDocs(tokens=tokens, starts=starts)
