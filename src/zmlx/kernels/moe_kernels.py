"""Kernel bodies of the moe family: the fused down projection + combine, and the combine.

The down-projection kernels reuse the quantized row loop of :mod:`.quant_kernels`. By default
(:data:`SPLIT_EXPERTS`) a group of ``K`` warps owns ``R`` output rows of one token, one warp
an expert, and the first warp adds the weighted projections in expert order
(:func:`split_combine_kernel`); otherwise one warp owns the rows and walks the ``K`` experts
(:func:`gather_combine_kernel`). Both round as mlx-lm rounds and give identical results.
"""

from __future__ import annotations

from functools import cache

from ..core.kernel import Kernel
from . import quant_kernels as _qk
from .quant_kernels import (
    HEADER,
    _acc_decl,
    _mat,
    _prologue,
    _qinputs,
    _reduce,
    _row_loop,
    _split_rows,
    _to_t,
    exact_accumulate,
    row_heads,
    text_cache,
    warp_sums_to_shared,
)

# ---------------------------------------------------------------------------------------
# Down projection x router weight, summed over the K experts of each token


def _projection(mode: str, regs: bool, batch: bool, vec: int) -> str:
    """Lane partial sums ``acc0[r]`` of expert ``ex``'s rows ``row0 ..`` times ``xp``."""
    return (_prologue("I", regs, mode, vec=vec) + _acc_decl(["acc0"])
            + _row_loop(mode, [_mat("0", mode)], "D", "ex * D", regs, "acc", batch, vec))  # fmt: skip


def _add_bias(has_bias: bool) -> str:
    """``y`` (an expert's projection of row ``row0 + r``) plus its bias, rounded to ``T``."""
    if not has_bias:
        return ""
    bias = "static_cast<float>(bias[(size_t)ex * D + row0 + r])"
    return f" if (row0 + r < D) {{ y = {_to_t('y + ' + bias)}; }}"


def _shared_and_residual(at: str, has_shared: bool, has_gate: bool, has_res: bool) -> list[str]:
    """Statements adding to ``v`` (the expert sum, already rounded to ``T``) the shared expert
    (gated: qwen3_next's ``sigmoid(gate) * shared_expert(x)``, each rounded to ``T``) and the
    residual stream ``rx + ra``, rounded as mlx-lm's expressions round; ``at``: the output
    element's index expression (``[...]``) into ``shared``, ``rx`` and ``ra``."""
    out = []
    if has_shared:
        sh = f"static_cast<float>(shared{at})"
        if has_gate:
            g = _to_t("zx_sigmoid(static_cast<float>(sgate[t]))")
            sh = _to_t(f"{g} * {sh}")
        out.append(f"v = v + {sh};")
    if has_res:
        if has_shared:
            out.append(f"v = {_to_t('v')};")
        out.append(f"v = v + {_to_t(f'static_cast<float>(rx{at}) + static_cast<float>(ra{at})')};")
    return out


def _epilogue(exact: bool, has_bias: bool, has_shared: bool, has_gate: bool,
              has_res: bool, head: list[str] | None = None, tot: str = "tot[r]") -> str:  # fmt: skip
    """The combine kernels' store, by lane 0 of the warp holding ``tot[r]`` (rows ``row0 ..
    row0 + R - 1`` of token ``t``): the expert sum rounded to ``T``, then the shared expert
    (gated) and the residual stream, rounded as mlx-lm's expressions round. ``head``: another
    head of the loop over rows (see :func:`.quant_kernels.row_heads`), whose lines leave row
    ``r``'s expert sum in ``tot``."""
    epi = head or ["  if (lane == 0u) {", "#pragma unroll", "    for (int r = 0; r < R; ++r) {"]
    epi += ["      const int row = row0 + r;", "      if (row < D) {", f"        float v = {tot};"]
    if has_bias and not exact:
        epi += [
            "        for (int k = 0; k < K; ++k) {",
            "          const int ex = static_cast<int>(idx[t * K + k]);",
            "          v += static_cast<float>(wts[t * K + k]) *",
            "               static_cast<float>(bias[(size_t)ex * D + row]);",
            "        }",
        ]
    epi.append(f"        v = {_to_t('v')};")
    epi += [f"        {ln}" for ln in _shared_and_residual("[(size_t)t * D + row]", has_shared,
                                                          has_gate, has_res)]  # fmt: skip
    epi += ["        out[(size_t)t * D + row] = static_cast<T>(v);", "      }", "    }", "  }"]
    return "\n".join(epi) + "\n"


@text_cache
def gather_combine_kernel(mode: str, has_bias: bool, has_shared: bool, has_gate: bool, regs: bool,
                          exact: bool = True, has_res: bool = False,
                          batch: bool = False, vec: int = 1):  # fmt: skip
    """``out[t, row] = sum_j weights[t, j] * (h[t, j] . W[idx[t, j], row])``, float32 sums.

    One warp owns ``R`` output rows of one token across all ``K`` experts, so no atomics
    are needed. Template constants: ``T``, ``P`` (the product dtype: ``T`` promoted with the
    weights' dtype), ``I`` (inputs), ``D`` (outputs), ``BITS``, ``GROUP_SIZE``, ``K``, ``R``,
    ``NB`` (warps per token). Runtime: ``rt[0]`` = tokens.

    ``exact`` rounds as mlx-lm does: each expert's projection (plus its bias) to ``T``, each
    product with its weight to ``P``, the running sum over ``k`` (in order) to ``P`` (one warp
    reduction per expert); otherwise one float32 sum and one reduction at the end.

    ``has_res`` adds a decoder layer's residual stream last, ``T(rx + ra)`` (inputs ``rx``,
    ``ra``), rounded as ``h + block(...)`` with ``h = x + attention`` rounds.

    ``batch``: the token's expert ids and weights are loaded before the expert loop and the
    row loop is the batched one (:func:`.quant_kernels._row_loop`); bit-identical results.
    ``vec``: words per weight load (:func:`.quant_kernels.load_words`).
    """
    inputs = _combine_inputs(mode, has_bias, has_shared, has_gate, has_res)
    body = """
  const int wid = (int)(gid * (lsize / 32u) + warp);
  const int t = wid / NB;
  if (t >= rt[0]) {
    return;
  }
  const int row0 = (wid % NB) * R;
"""
    body += _acc_decl(["tot"])
    if batch:  # the token's expert ids and weights, loaded ahead of the expert loop
        body += """
  int exs[K];
  float wks[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    exs[k] = static_cast<int>(idx[t * K + k]);
    wks[k] = static_cast<float>(wts[t * K + k]);
  }"""
    ex, wk = ("exs[k]", "wks[k]") if batch else ("static_cast<int>(idx[slot])",
                                                 "static_cast<float>(wts[slot])")  # fmt: skip
    body += f"""
  for (int k = 0; k < K; ++k) {{
    const int slot = t * K + k;
    const int ex = {ex};
    const float wk = {wk};
    const T* xp = h + (size_t)slot * I;
"""
    body += _projection(mode, regs, batch, vec)
    if exact:
        add_bias = _add_bias(has_bias)
        body += f"""
#pragma unroll
    for (int r = 0; r < R; ++r) {{
      float y = {_to_t("zx_warp_sum(acc0[r])")};{add_bias}
      {exact_accumulate("tot[r]", "y", "wk")}
    }}
  }}
"""
    else:
        body += """
#pragma unroll
    for (int r = 0; r < R; ++r) {
      tot[r] += wk * acc0[r];
    }
  }
"""
        body += _reduce(["tot"])
    body += _epilogue(exact, has_bias, has_shared, has_gate, has_res)
    name = f"qmv_combine_{mode}" + ("_exact" if exact else "") + ("_res" if has_res else "")
    name += ("_batched" if batch else "") + (f"_v{vec}" if vec != 1 else "")
    return Kernel(name, inputs, ["out"], body, header=HEADER)


# ---------------------------------------------------------------------------------------
# Weighted combine over experts: one thread per output element, K read in order

_COMBINE_BODY = """
  const size_t i = tid;
  if (i >= (size_t)rt[0] * D) {
    return;
  }
  const size_t t = i / D;
  const size_t d = i % D;
  float acc = 0.0f;
  for (int k = 0; k < K; ++k) {
    const float yv = static_cast<float>(y[(t * K + k) * D + d]);
    const float wv = static_cast<float>(wts[t * K + k]);
    STEP
  }
  STORE
"""


@cache
def combine_kernel(exact: bool, has_shared: bool, has_gate: bool, has_res: bool = False) -> Kernel:
    """The weighted sum over a token's ``K`` expert outputs ``y`` (one thread an output
    element), then the shared expert (gated) and, with ``has_res``, the residual stream
    ``rx + ra`` (:func:`_shared_and_residual`, as the fused kernels add them). Template constants: ``T``, ``K``, ``D``,
    ``P`` (``exact``). Runtime: ``rt[0]`` = tokens."""
    if exact:
        # MLX rounds each product to P, then sums in P in order (CPU, and CUDA's
        # col_reduce_small for K <= 32 and D % 8 == 0), then casts to y's dtype.
        step = exact_accumulate("acc", "yv", "wv")
    else:
        step = "acc += wv * yv;"
    store = "float v = static_cast<float>(static_cast<T>(acc));"
    store += "".join(
        f"\n  {ln}" for ln in _shared_and_residual("[i]", has_shared, has_gate, has_res)
    )
    store += "\n  out[i] = static_cast<T>(v);"
    inputs = ["y", "wts"] + (["shared"] if has_shared else []) + (["sgate"] if has_gate else [])
    inputs += ["rx", "ra"] if has_res else []
    body = _COMBINE_BODY.replace("STEP", step).replace("STORE", store)
    name = "moe_combine" + ("_exact" if exact else "") + ("_res" if has_res else "")
    return Kernel(name, inputs + ["rt"], ["out"], body)


# The down projection + combine with a token's experts side by side (split_combine_kernel),
# and its rows per group. On an H100 at Qwen3-30B-A3B's shape, in one decode step: 21.4 us
# against 29.7 us for one warp walking the experts (kernel_profile_split_experts_h100.json).
SPLIT_EXPERTS = True
# Rows per group at K >= 8: one Qwen3 block took 18.2 us at 4 against 20.2 at 2 and 21.1 at 8
# (moe_block_device_rows_h100.json, at e32460f).
SPLIT_ROWS = 4
# Rows per group for tokens of fewer than 8 experts (LFM2, GLM-4.7-Flash, GPT-OSS: K = 4).
# Device time of one block on an H100, R = 4 against 2, in two runs
# (moe_block_device_xlate_h100.json, moe_block_device_vec_h100.json): LFM2 38.5/38.0 against
# 31.0/36.6 us, GLM 36.6/35.9 against 32.3/34.8, GPT-OSS 78.9/80.0 against 75.1/76.8; Qwen3
# (K = 8) 19.5/19.6 against 20.9/21.0.
SPLIT_ROWS_FEW = 2
# Warps a group of the split combine kernel aims at: each expert's inputs split across up to
# COMBINE_WARPS // K warps (quant_kernels.split_ways), so K = 4 experts still fill 8 warps.
COMBINE_WARPS = 8
# Groups of the split combine kernel the compiler must fit on one multiprocessor (launch
# bounds); 0: its own choice.
COMBINE_MIN_GROUPS = 0
# Tokens of fewer experts than this take the down projection and the combine in two launches:
# the split-row gathered matvec (a group of warps on rows of ONE expert) writes each expert's
# rounded projection, then :func:`combine_kernel` adds them in expert order, rounded as the
# fused kernel rounds (see gather_qmv_combine). Off (0): on an H100 the two measurements
# disagree. Alone, one token at GLM-4.7-Flash's shape (K = 4), the fused kernel takes 22.2 us
# against 9.1 us for the matvec (ncu_sweep_combine2_h100.json), and 8 chained blocks take
# 32.2 against 23.7 us a block (moe_block_device_twopass_h100.json); inside a decode step the
# fused kernel takes 7.5 us against 7.2 + 1.4 (GLM) and 10.0 against 8.3 + 2.4 (LFM2)
# (kernel_profile_twopass_*_h100.json), and decode is what the default serves.
COMBINE_TWO_PASS_BELOW = 0


def split_combine_shape(i_dim: int, bits: int, group_size: int, k: int) -> tuple[int, int]:
    """``(R, S)`` of the split combine for ``k`` experts of ``i_dim`` inputs: rows a group
    (:data:`SPLIT_ROWS`, or :data:`SPLIT_ROWS_FEW` under 8 experts) and warps an expert (up to
    ``COMBINE_WARPS // k``, see :func:`.quant_kernels.split_ways`; 1 always fits)."""
    r = SPLIT_ROWS if k >= 8 else SPLIT_ROWS_FEW
    return r, _qk.split_ways(i_dim, bits, group_size, max(1, COMBINE_WARPS // k), least=1)


def _combine_inputs(mode: str, has_bias: bool, has_shared: bool, has_gate: bool,
                    has_res: bool) -> list[str]:  # fmt: skip
    inputs = ["h", *_qinputs("0", mode), "idx", "wts"]
    inputs += [n for n, on in (("bias", has_bias), ("shared", has_shared), ("sgate", has_gate))
               if on]  # fmt: skip
    return inputs + (["rx", "ra"] if has_res else []) + ["rt"]


def _bias_add(has_bias: bool) -> str:
    """Expert ``exk``'s bias added to row ``row0 + r``'s rounded projection ``y``, in ``T``."""
    if not has_bias:
        return ""
    return (" if (row0 + r < D) { y = "
            + _to_t("y + static_cast<float>(bias[(size_t)exk * D + row0 + r])") + "; }")  # fmt: skip


def expert_rows_tail(has_bias: bool, has_shared: bool, has_gate: bool, has_res: bool) -> str:
    """The first warp's end of a combine whose warps left expert ``k``'s ``S`` partial sums of
    row ``r`` in shared ``red[(k * S + s) * R + r]``: lane ``r`` adds them in order, rounds
    the projection to ``T`` (plus its bias), adds the K weighted projections in expert order
    as mlx-lm rounds them, then the shared expert and the residual (:func:`_epilogue`)."""
    head, _ = row_heads(True, 1, fin=False)
    head += ["      float totr = 0.0f;", "      for (int k = 0; k < K; ++k) {",
             "        const float wk = static_cast<float>(wts[t * K + k]);",
             "        const int exk = static_cast<int>(idx[t * K + k]);",
             "        float y = red[(k * S) * R + r];",
             "        for (int s = 1; s < S; ++s) {",
             "          y += red[(k * S + s) * R + r];", "        }",
             f"        y = {_to_t('y')};{_bias_add(has_bias)}",
             f"        {exact_accumulate('totr', 'y', 'wk')}", "      }"]  # fmt: skip
    return _epilogue(True, has_bias, has_shared, has_gate, has_res, head, "totr")


@text_cache
def split_combine_kernel(mode: str, has_bias: bool, has_shared: bool, has_gate: bool,
                         has_res: bool = False, all_rows: bool = True) -> Kernel:  # fmt: skip
    """The kernel of :func:`split_combine_parts`."""
    name, inputs, body = split_combine_parts(mode, has_bias, has_shared, has_gate, has_res,
                                             all_rows)  # fmt: skip
    return Kernel(name, inputs, ["out"], body, header=HEADER)


def split_combine_parts(mode: str, has_bias: bool, has_shared: bool, has_gate: bool,
                        has_res: bool = False, all_rows: bool = True, before_x: str = "",
                        before_rows: str = "") -> tuple[str, list[str], str]:  # fmt: skip
    """Name, inputs and body (output ``out``) of :func:`gather_combine_kernel` (exact
    rounding) with the ``K`` experts of a token side by side: a group of ``K * S`` warps
    owns ``R`` output rows of one token; the ``S`` warps of expert ``k`` (warps ``k * S ..
    k * S + S - 1``) each take a slice ``I / S`` of its inputs and leave their partial sums
    in shared memory, the weights' loads issued ahead of x's and of the math as in
    :func:`.quant_kernels._split_rows`. The first warp then rounds each
    expert's projection (its ``S`` partials added in order) to ``T`` with its bias and adds
    the weighted projections in expert order, rounded as mlx-lm rounds. The one-warp kernel
    walks the experts one after another in every warp, so a row waits for memory ``K`` times.

    With ``S = 1`` a projection is one warp's sum, as in the one-warp kernel: bit-identical
    results. With ``S > 1`` its float32 sum runs in another order (last-place differences
    before the rounding to ``T``).

    Template constants: ``T``, ``P``, ``I``, ``D``, ``BITS``, ``GROUP_SIZE``, ``K``, ``S``
    (warps per expert; ``I / S`` a multiple of ``GROUP_SIZE``), ``R``, ``NB`` (groups per
    token). Runtime: ``rt[0]`` = tokens. ``before_rows``: lines before the weights' loads
    (the part's ``NW`` and ``NG`` known); ``before_x``: lines between the weights' loads and
    x's (see :func:`.quant_kernels._split_rows`; ``all_rows`` only).
    """
    inputs = _combine_inputs(mode, has_bias, has_shared, has_gate, has_res)
    body = """
  ZX_SHARED float red[K * S * R];
  const int t = (int)gid / NB;
  if (t >= rt[0]) {
    return;
  }
  const int row0 = ((int)gid % NB) * R;
  const int slot = t * K + (int)warp / S;
  const int ex = static_cast<int>(idx[slot]);
  const T* xp = h + (size_t)slot * I + ((int)warp % S) * (I / S);
"""
    body += _prologue("(I / S)", False, mode) + _acc_decl(["acc0"]) + before_rows
    body += _split_rows(mode, [_mat("0", mode)], "D", "ex * D", "S", "(int)warp % S", all_rows,
                        before_x)  # fmt: skip
    body += warp_sums_to_shared(["acc0"], "red[(int)warp * R + {r}]")
    body += """  zx_barrier();
  if (warp != 0u) {
    return;
  }
"""
    if _qk.LANE_ROWS:  # lane r adds row r's experts, in expert order as below
        body += expert_rows_tail(has_bias, has_shared, has_gate, has_res)
    else:
        body += _acc_decl(["tot"])
        body += f"""
  for (int k = 0; k < K; ++k) {{
    const float wk = static_cast<float>(wts[t * K + k]);
    const int exk = static_cast<int>(idx[t * K + k]);
#pragma unroll
    for (int r = 0; r < R; ++r) {{
      float y = red[(k * S) * R + r];
      for (int s = 1; s < S; ++s) {{
        y += red[(k * S + s) * R + r];
      }}
      y = {_to_t("y")};{_bias_add(has_bias)}
      {exact_accumulate("tot[r]", "y", "wk")}
    }}
  }}
"""
        body += _epilogue(True, has_bias, has_shared, has_gate, has_res)
    name = (f"qmv_combine_{mode}_exact" + ("_res" if has_res else "") + "_split"
            + ("" if all_rows else "_r1"))  # fmt: skip
    return name, inputs, body
