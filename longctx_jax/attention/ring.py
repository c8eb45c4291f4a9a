"""Ring attention and all-gather context parallelism on `jax.shard_map`.

Ring Attention (Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers
for Near-Infinite Context"): the sequence is cut into P shards along a mesh axis. Device r
keeps its queries q_r and passes key/value shards around a ring; at hop i it holds the
K/V of device r - i, attends to them with a memory-efficient kernel that returns the
log-sum-exp, and folds the result into its online-softmax state (see online_softmax.py):
    (out_i, lse_i) = attend_with_lse(q_r, k_(r-i), v_(r-i)),   state <- merge(state, (out_i, lse_i))
and finally out = o / l, lse = m + log l. Each hop's transfer is issued before the compute
on the block already held, so communication overlaps compute; no device holds more than
two K/V shards.

The per-block kernel is a registry implementation with an lse variant and a backward from
(out, lse) (`ring_inner`): on GPU the Pallas flash kernel (Triton), on CPU the fused C++
cpu_flash for the device's own shard where its mask is one cpu_flash expresses and
blockwise elsewhere, on TPU blockwise (splash returns no log-sum-exp to merge). Any such
implementation can be forced with `inner=`; flash runs in the Pallas interpreter off GPU.

The backward (a `jax.custom_vjp`, not autodiff through the forward's communication) is
the ring-flash backward: K/V travel again, each with a dK/dV accumulator; per hop the
inner kernel's backward is called with the GLOBAL output and lse (p = exp(s - lse) is then
the true softmax over all shards), dq accumulates locally and every device adds its dK/dV
contribution to the travelling accumulator before passing it on; after the last hop the
accumulators land back on the devices that own those keys.

Masks are evaluated on true positions, so permuted layouts (`longctx_jax.parallel.layout`,
zig-zag / striped causal load balancing) need only their permuted `q_positions` /
`k_positions`; the inner kernel gets each shard's true positions (the device's own shard
under a contiguous layout keeps default positions, so its kernel skips masked tiles).
Shards no query may see (`_may_attend`) are not computed; with contiguous default
positions and a sliding window, shards wholly outside the window are not even sent: the
ring stops after ceil((window - 1) / shard_len) hops (each direction for a bidirectional
window).

`context_parallel="all_gather"` gathers K/V once (Llama 3's context parallelism) and
attends locally with the same inner kernel; its backward reduce-scatters dK/dV.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from longctx_jax.attention import dispatch
from longctx_jax.attention.dense import MASKED_LOGIT
from longctx_jax.attention.masks import AttentionMask, allowed_BTS
from longctx_jax.attention.online_softmax import SoftmaxState, finalize, merge
from longctx_jax.attention.ring_inner import GPU_PLATFORMS, check_inner, platform_of, ring_inner
from longctx_jax.attention.spec import AttentionSpec, implementation
from longctx_jax.typing import Array

CONTEXT_PARALLEL = ("ring", "all_gather")
_HAS_KEY_CHUNK = 512  # keys per step of the scan that finds rows with an allowed key


class _Queries(NamedTuple):
    q_BTNH: Array
    pos_BT: Array
    seg_BT: Array | None


class _Keys(NamedTuple):
    k_BSKH: Array
    v_BSKH: Array
    pos_BS: Array
    seg_BS: Array | None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one call, shared by the forward and backward passes."""

    axis_name: str
    ring_size: int
    mask: AttentionMask
    scale: float
    logit_soft_cap: float | None
    hops: tuple[tuple[int, int], ...]  # (direction, hops): direction +1 receives from r - 1
    all_gather: bool
    inner: str  # registry name for shards at explicit positions
    own_inner: str | None  # for the device's own shard at default positions; None: not contiguous
    options: tuple[tuple[str, Any], ...]  # the inner kernel's options (block sizes, interpret)
    has_key_chunk: int


# ----------------------------------------------------------------------------------------
# One device, one K/V shard.


def _may_attend(mask: AttentionMask, q_pos: Array, k_pos: Array) -> Array:
    """Scalar bool, False only when no (q, k) pair of the blocks can be allowed."""
    q_lo, q_hi, k_lo, k_hi = q_pos.min(), q_pos.max(), k_pos.min(), k_pos.max()
    ok = jnp.bool_(True)
    if mask.causal:
        ok = ok & (k_lo <= q_hi)
    if mask.window is not None:
        gap = jnp.maximum(jnp.maximum(k_lo - q_hi, q_lo - k_hi), 0)
        near = gap < mask.window
        if mask.sinks:
            near = near | (k_lo < mask.sinks)
        ok = ok & near
    return ok


def _empty_like(q_BTNH: Array) -> SoftmaxState:
    """`online_softmax.empty_state`, built with *_like so it varies along the mesh axis."""
    out = jnp.zeros_like(q_BTNH, jnp.float32)
    row = out.sum(axis=-1)  # a reduction keeps the sharding of B, T, N (indexing may not)
    return SoftmaxState(out, row + MASKED_LOGIT, row)


def _skippable(plan: _Plan) -> bool:
    return plan.mask.causal or plan.mask.window is not None


def _when_may_attend(plan: _Plan, qs: _Queries, ks: _Keys, compute, skip):
    if not _skippable(plan):
        return compute()
    return lax.cond(_may_attend(plan.mask, qs.pos_BT, ks.pos_BS), compute, skip)


def _block_spec(plan: _Plan, qs: _Queries, slopes_N: Array | None, ks: _Keys, own: bool) -> AttentionSpec:
    positions = {} if own else {"q_positions": qs.pos_BT, "k_positions": ks.pos_BS}
    return AttentionSpec(
        causal=plan.mask.causal, window=plan.mask.window, sinks=plan.mask.sinks, alibi_slopes=slopes_N,
        segment_ids=qs.seg_BT, kv_segment_ids=ks.seg_BS, logit_soft_cap=plan.logit_soft_cap,
        scale=plan.scale, **positions,
    )


def _chunks(x: Array, chunk: int) -> Array:
    """`[B, S, ...]` to `[S / chunk, B, chunk, ...]`."""
    return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)


def _rows_with_keys(plan: _Plan, qs: _Queries, ks: _Keys) -> Array:
    """`[B, T]` bool: the query may see at least one key of the shard (scanned in chunks)."""

    def body(found, kc):
        pos, seg = kc
        return found | allowed_BTS(plan.mask, qs.pos_BT, pos, qs.seg_BT, seg).any(axis=-1), None

    found0 = jnp.zeros_like(qs.pos_BT, bool)
    seg = None if ks.seg_BS is None else _chunks(ks.seg_BS, plan.has_key_chunk)
    found, _ = lax.scan(body, found0, (_chunks(ks.pos_BS, plan.has_key_chunk), seg))
    return found


def _shard_forward(plan: _Plan, qs: _Queries, slopes_N: Array | None, ks: _Keys, own: bool) -> SoftmaxState:
    """Online-softmax state of the local queries over one K/V shard, by the inner kernel.

    The kernel's normalised (out, lse) is the state (out, max = lse, denom = 1); rows that
    see no key of the shard get the empty state (the kernel's lse 0 there is no weight).
    """

    def compute():
        name = plan.own_inner if own else plan.inner
        spec = _block_spec(plan, qs, slopes_N, ks, own)
        attend = dispatch.entry(name).with_lse()
        out, lse = attend(qs.q_BTNH, ks.k_BSKH, ks.v_BSKH, spec, **dict(plan.options))
        has_BTN = jnp.broadcast_to(_rows_with_keys(plan, qs, ks)[:, :, None], lse.shape)
        return SoftmaxState(out.astype(jnp.float32), jnp.where(has_BTN, lse, MASKED_LOGIT),
                            has_BTN.astype(jnp.float32))

    return _when_may_attend(plan, qs, ks, compute, lambda: _empty_like(qs.q_BTNH))


def _shard_backward(plan, qs, slopes_N, ks, out_BTNH, lse_BTN, d_out_BTNH, own: bool):
    """float32 (dq, dk, dv) of the local queries against one K/V shard, given the global out, lse."""

    def compute():
        name = plan.own_inner if own else plan.inner
        spec = _block_spec(plan, qs, slopes_N, ks, own)
        grads = dispatch.entry(name).backward()(
            qs.q_BTNH, ks.k_BSKH, ks.v_BSKH, out_BTNH, lse_BTN, d_out_BTNH, None, spec, **dict(plan.options)
        )
        return tuple(g.astype(jnp.float32) for g in grads)

    def skip():
        return (
            jnp.zeros_like(qs.q_BTNH, jnp.float32),
            jnp.zeros_like(ks.k_BSKH, jnp.float32),
            jnp.zeros_like(ks.v_BSKH, jnp.float32),
        )

    return _when_may_attend(plan, qs, ks, compute, skip)


# ----------------------------------------------------------------------------------------
# The ring.


def _shift(plan: _Plan, distance: int) -> list[tuple[int, int]]:
    """ppermute pairs sending device j's data to device j + distance (mod ring size)."""
    P = plan.ring_size
    return [(j, (j + distance) % P) for j in range(P)]


def _ppermute(tree, plan: _Plan, distance: int):
    if distance % plan.ring_size == 0:
        return tree
    return lax.ppermute(tree, plan.axis_name, _shift(plan, distance))


def _ring_scan(plan: _Plan, step, carry, block, direction: int, hops: int):
    """Applies `carry = step(carry, block)` to the `hops` blocks arriving over the ring.

    Each block's transfer is issued before the compute on the block already held.
    """

    def body(state, _):
        carry, block = state
        incoming = _ppermute(block, plan, direction)
        return (step(carry, block), incoming), None

    block = _ppermute(block, plan, direction)
    if hops > 1:
        (carry, block), _ = lax.scan(body, (carry, block), None, length=hops - 1)
    return step(carry, block)


def _ring_forward(plan: _Plan, qs: _Queries, slopes_N: Array | None, ks: _Keys) -> SoftmaxState:
    state = _shard_forward(plan, qs, slopes_N, ks, own=plan.own_inner is not None)
    for direction, hops in plan.hops:

        def step(state, block):
            return merge(state, _shard_forward(plan, qs, slopes_N, block, own=False))

        state = _ring_scan(plan, step, state, ks, direction, hops)
    return state


def _ring_backward(plan, qs, slopes_N, ks, out_BTNH, lse_BTN, d_out_BTNH):
    """float32 (dq, dk, dv) for the local shards; dK/dV accumulators travel with K/V."""
    dq, dk, dv = _shard_backward(plan, qs, slopes_N, ks, out_BTNH, lse_BTN, d_out_BTNH,
                                 own=plan.own_inner is not None)
    for direction, hops in plan.hops:

        def step(carry, block, direction=direction):
            dq, (acc_k, acc_v) = carry  # acc: contributions to `block` from earlier devices
            dq_b, dk_b, dv_b = _shard_backward(plan, qs, slopes_N, block, out_BTNH, lse_BTN, d_out_BTNH,
                                               own=False)
            return dq + dq_b, _ppermute((acc_k + dk_b, acc_v + dv_b), plan, direction)

        acc = (jnp.zeros_like(dk), jnp.zeros_like(dv))
        dq, acc = _ring_scan(plan, step, (dq, acc), ks, direction, hops)
        # Device r now holds the sums for the block of device r - (hops + 1) * direction.
        acc_k, acc_v = _ppermute(acc, plan, -(hops + 1) * direction)
        dk, dv = dk + acc_k, dv + acc_v
    return dq, dk, dv


def _gather(plan: _Plan, ks: _Keys) -> _Keys:
    return jax.tree.map(lambda x: lax.all_gather(x, plan.axis_name, axis=1, tiled=True), ks)


def _forward(plan, qs, slopes_N, ks) -> tuple[Array, Array]:
    if plan.all_gather:
        state = _shard_forward(plan, qs, slopes_N, _gather(plan, ks), own=False)
    else:
        state = _ring_forward(plan, qs, slopes_N, ks)
    out, lse = finalize(state)
    return out.astype(qs.q_BTNH.dtype), lse


def _make_attention(plan: _Plan):
    """Per-device attention with a custom (communicating) VJP."""

    @jax.custom_vjp
    def attend(qs: _Queries, slopes_N, ks: _Keys) -> Array:
        return _forward(plan, qs, slopes_N, ks)[0]

    def fwd(qs, slopes_N, ks):
        out, lse = _forward(plan, qs, slopes_N, ks)
        return out, (qs, slopes_N, ks, out, lse)

    def bwd(residuals, d_out_BTNH):
        qs, slopes_N, ks, out, lse = residuals
        if plan.all_gather:
            gathered = _gather(plan, ks)
            dq, dk, dv = _shard_backward(plan, qs, slopes_N, gathered, out, lse, d_out_BTNH, own=False)
            dk, dv = (lax.psum_scatter(d, plan.axis_name, scatter_dimension=1, tiled=True) for d in (dk, dv))
        else:
            dq, dk, dv = _ring_backward(plan, qs, slopes_N, ks, out, lse, d_out_BTNH)
        d_qs = _Queries(dq.astype(qs.q_BTNH.dtype), None, None)
        d_ks = _Keys(dk.astype(ks.k_BSKH.dtype), dv.astype(ks.v_BSKH.dtype), None, None)
        return d_qs, None, d_ks

    attend.defvjp(fwd, bwd)
    return attend


# ----------------------------------------------------------------------------------------
# Public entry point.


def ring_hops(
    ring_size: int, mask: AttentionMask, shard_len: int, contiguous: bool
) -> tuple[tuple[int, int], ...]:
    """Ring passes `((direction, hops), ...)` a call needs.

    The full ring is P - 1 hops in one direction. With contiguous positions and a sliding
    window (no sinks), the shard i hops away is wholly outside the window once
    (i - 1) * shard_len + 1 >= window, so only ceil((window - 1) / shard_len) hops are needed
    (towards earlier positions for a causal mask, both ways for a bidirectional one).
    """
    full = ((1, ring_size - 1),) if ring_size > 1 else ()
    if not contiguous or mask.window is None or mask.sinks:
        return full
    reach = min(-(-(mask.window - 1) // shard_len), ring_size - 1)
    if mask.causal:
        return ((1, reach),) if reach else ()
    if 2 * reach >= ring_size - 1:
        return full
    return ((1, reach), (-1, reach)) if reach else ()


def _chunk_len(shard_len: int, block_size: int) -> int:
    """Largest divisor of `shard_len` that is <= block_size."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    best = 1
    for d in range(1, math.isqrt(shard_len) + 1):
        if shard_len % d == 0:
            for c in (d, shard_len // d):
                if best < c <= block_size:
                    best = c
    return best


def _explicit(mesh, axis_name: str) -> bool:
    return dict(zip(mesh.axis_names, mesh.axis_types, strict=True))[axis_name] == AxisType.Explicit


def _spec_of(x: Array) -> list:
    return (list(jax.typeof(x).sharding.spec) + [None] * x.ndim)[: x.ndim]


def _on_axis(x: Array | None, mesh, axis_name: str, batch_spec) -> Array | None:
    """Reshards `x` to batch sharding `batch_spec` and dim 1 split over an Explicit axis.

    shard_map needs Explicit arrays' sharding types to match its in_specs, and all inputs
    share q's batch sharding so per-chunk results agree in type. Auto axes are left to
    shard_map. Other dims keep their sharding.
    """
    if x is None or not _explicit(mesh, axis_name):
        return x

    def without(entry):
        if entry == axis_name:
            return None
        if isinstance(entry, tuple):
            return tuple(a for a in entry if a != axis_name) or None
        return entry

    spec = _spec_of(x)
    want = [without(batch_spec), axis_name] + [without(e) for e in spec[2:]]
    if spec == want:
        return x
    target = PartitionSpec(*want)
    if isinstance(mesh, jax.sharding.Mesh):
        target = NamedSharding(mesh, target)
    return jax.reshard(x, target)


def _resolve_mesh(mesh):
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.axis_names:
            raise ValueError("ring_attention needs a mesh: pass mesh=... or call it under jax.set_mesh(mesh)")
    return mesh


@implementation(name="ring", unsupported={"bias", "mask"},
                alternatives="alibi_slopes for ALiBi; a dense bias or mask does not shard")
def ring_attention(
    q: Array,
    k: Array,
    v: Array,
    spec: AttentionSpec,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    axis_name: str = "sequence",
    context_parallel: str = "ring",
    inner: str | None = None,
    block_size: int | None = None,
) -> Array:
    """Context-parallel attention over arrays sharded along the sequence on a mesh axis.

    Same results as `dense.attention` on the global arrays. Arrays stay in the order given
    (natural order unless the caller applied a `parallel.layout` permutation, in which case
    it passes the permuted true positions).

    Args:
      q, k, v: global queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0,
        T and S divisible by the size of mesh axis `axis_name`.
      spec: an `AttentionSpec` (or its fields as keyword arguments); a materialised `bias`
        or `mask` is not supported.
      mesh: the mesh; None uses the one set by `jax.set_mesh`. Other mesh axes (e.g. a
        batch `data` axis) keep whatever sharding the arrays have. Its device platform
        (an `AbstractMesh`'s `abstract_device`, so a CPU can lower for "cuda") picks the
        per-shard kernel.
      axis_name: mesh axis the sequence is sharded over.
      context_parallel: `"ring"` (K/V passed around the ring) or `"all_gather"` (K/V
        gathered once).
      inner: the per-shard kernel, a registry name with an lse variant and a backward
        from (out, lse) ("flash", "blockwise", "cpu_flash"); None: `ring_inner` for the
        mesh's platform. Flash runs through Triton on a GPU mesh, the interpreter elsewhere.
      block_size: the inner kernel's query and key tile (`block_q = block_k`; flash wants a
        power of two, cpu_flash a multiple of 16); None: the kernel's defaults.

    Returns:
      `[B, T, N, H]` in q's dtype, sharded like q along the sequence.
    """
    if context_parallel not in CONTEXT_PARALLEL:
        raise ValueError(f"unknown context_parallel {context_parallel!r}; valid: {CONTEXT_PARALLEL}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    mesh = _resolve_mesh(mesh)
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not a mesh axis; mesh axes: {tuple(mesh.axis_names)}")
    if inner is not None:
        check_inner(inner, spec)
    ring_size = dict(mesh.shape)[axis_name]
    B, T, N, H = q.shape
    S = k.shape[1]
    if T % ring_size or S % ring_size:
        raise ValueError(
            f"query length {T} and key length {S} must be divisible by the {axis_name!r} "
            f"ring size {ring_size}"
        )
    mask = spec.pattern
    contiguous = spec.default_positions and T == S
    q_pos, k_pos = spec.positions(B, T, S)
    q_seg = kv_seg = None
    if spec.segment_ids is not None:
        q_seg = jnp.broadcast_to(spec.segment_ids, (B, T))
        kv_seg = q_seg if spec.kv_segment_ids is None else jnp.broadcast_to(spec.kv_segment_ids, (B, S))
    slopes = None if spec.alibi_slopes is None else jnp.asarray(spec.alibi_slopes, jnp.float32)
    shard_len = S // ring_size
    platform = platform_of(mesh)
    all_gather = context_parallel == "all_gather"
    # The own shard at default positions is the same problem only if the mask is
    # translation invariant: causal / window / ALiBi are, sinks (key position < s) are not.
    own = contiguous and not all_gather and not mask.sinks
    options = {} if block_size is None else {"block_q": block_size, "block_k": block_size}
    chosen = inner or ring_inner(platform, spec)
    own_inner = (inner or ring_inner(platform, spec, own_shard=True)) if own else None
    if "flash" in (chosen, own_inner):
        options["interpret"] = platform not in GPU_PLATFORMS
    plan = _Plan(
        axis_name=axis_name,
        ring_size=ring_size,
        mask=mask,
        scale=spec.scale_for(H),
        logit_soft_cap=spec.logit_soft_cap,
        hops=ring_hops(ring_size, mask, shard_len, contiguous),
        all_gather=all_gather,
        inner=chosen,
        own_inner=own_inner,
        options=tuple(sorted(options.items())),
        has_key_chunk=_chunk_len(S if all_gather else shard_len, _HAS_KEY_CHUNK),
    )
    batch_spec = _spec_of(q)[0] if _explicit(mesh, axis_name) else None
    qs, ks = jax.tree.map(
        lambda x: _on_axis(x, mesh, axis_name, batch_spec),
        (_Queries(q, q_pos, q_seg), _Keys(k, v, k_pos, kv_seg)),
    )
    seq = PartitionSpec(None, axis_name)
    in_specs, out_specs, manual = (seq, PartitionSpec(), seq), seq, {axis_name}
    if _explicit(mesh, axis_name):
        # Explicit axes besides the ring's (batch over `data`, heads over `tensor`) go manual
        # too, so the inner kernel sees plain per-device arrays.
        in_specs = jax.tree.map(lambda x: PartitionSpec(*_spec_of(x)), (qs, ks))
        heads = PartitionSpec(_spec_of(q)[2])
        if slopes is not None and heads != PartitionSpec(None):
            target = heads if not isinstance(mesh, jax.sharding.Mesh) else NamedSharding(mesh, heads)
            slopes = jax.reshard(slopes, target)
        in_specs = (in_specs[0], None if slopes is None else heads, in_specs[1])
        out_specs = in_specs[0].q_BTNH
        for spec_ in jax.tree.leaves(in_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
            for entry in spec_:
                manual |= set(entry if isinstance(entry, tuple) else (entry,)) - {None}
    sharded = jax.shard_map(
        _make_attention(plan),
        mesh=mesh,
        in_specs=in_specs,
        out_specs=out_specs,
        axis_names=manual,
        # The inner kernels build their own loop states and FFI / Pallas calls, which carry no
        # varying-over-the-ring type; the VJP is our own, so nothing relies on that typing.
        check_vma=False,
    )
    return sharded(qs, slopes, ks)
