"""One MoE block's routed experts in ONE launch: gate/up + activation, then down + combine.

Why: at decode the two kernels of :func:`.moe.moe_experts` (the split-row gate/up kernel and
the split-expert combine) each pay a launch and a ramp, and the combine's groups wait for their
down-projection weights only after the gate/up kernel has ended (the combine runs as one
partial wave bound by memory latency: ``ncu_stalls_qwen3_combine_h100.txt``). Here both run in
one grid: groups that start first do the gate/up rows, later ones the combine rows, and a
combine group issues its weights' loads before it waits for the gate/up groups' output.

Order without deadlock: a group takes a ticket (:func:`zx_ticket` on a counter) when it starts.
Tickets below ``G1`` (the gate/up groups' count) do gate/up work; after their rows are stored
and fenced they count up a second counter. Higher tickets do combine work and wait
(:func:`zx_wait_count`) until that counter reaches ``G1``. A group waits only for groups whose
tickets came before its own, which are therefore running, whatever order the GPU starts
groups in. The last combine group to finish (a third counter) puts the three counters back to
zero, so the next launch (stream-ordered after this one) starts from zero. The counters live
in a small array kept per stream (:func:`counters`), an input the kernel writes; each on its
own 128-byte line.

Measured slower than the two launches in every form (:data:`FUSED_EXPERTS` says by how much),
so it is off by default: the combine is bound by its own instruction chain, which still runs
after the wait.

The two parts are the kernels' own bodies (:func:`.quant_kernels.split_matvec_parts` and
:func:`.moe_kernels.split_combine_parts`), each in a block that names its template constants
as the two-launch kernels do: the same sums in the same order, bit-identical outputs. Both
parts need groups of the same number of warps (Qwen3-30B-A3B: 8 and 8 experts x 1).
CUDA only (and the CPU emulator, where groups run one after another and the wait checks that
the count is reached).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..core.kernel import Kernel
from . import moe_kernels as mk
from . import quant_kernels as qk

# Fuse the experts' two launches into one where it covers the call (see moe._fused_experts).
# Off: slower in every form timed on an H100. One Qwen3-30B-A3B block (device time of 8 chained
# blocks) took 24.0 us fused against 18.2 for the two launches (moe_block_device_fused_h100.json,
# at d0c6d36); with the counters on their own lines, one thread fencing and either order or
# prefetch form, 21.0-21.6 against 18.3 (moe_block_device_fused3_h100.json, at 6df0624); LFM2
# 35.0-49.4 against 34.9. Under Nsight Compute the fused kernel took 26.1 us against 15.5 +
# 9.6 (ncu_fused_experts_qwen3_h100.txt, ncu_two_launch_experts_qwen3_h100.txt): the combine
# groups, resident early, wait (barrier stalls) and then still run their whole instruction
# chain, which bounds the combine rather than its loads' latency.
FUSED_EXPERTS = False
# How a combine group gets its down-projection weights while it waits for the gate/up groups:
# "l2": it asks L2 for their lines (prefetch hints, no registers), waits, then loads them;
# "registers": it loads them into registers, then waits (every weight word, scale and bias is
# live across the wait: 79 registers a thread against 48 for the gate/up kernel alone, under
# NVRTC 13 for sm_90a at Qwen3-30B-A3B's shape, so fewer groups fit on a multiprocessor);
# "none": it waits first.
FUSED_PREFETCH = "l2"

# Which group does what: "tickets" (the order groups start in, see the module docstring) or
# "index" (the group index: gate/up groups first; a combine group that the GPU starts before
# some gate/up group can wait for it while holding a multiprocessor's slot).
FUSED_ORDER = "tickets"

_COUNTERS: dict[str, mx.array] = {}
_LINE = 32  # uint32 counters a 128-byte line holds
_DONE, _FIN = _LINE, 2 * _LINE


def counters() -> mx.array:
    """The fused kernel's three counters (uint32, zero between launches) for the current
    stream: launches on one stream run one after another, so they can share them."""
    key = str(mx.default_stream(mx.default_device()))
    c = _COUNTERS.get(key)
    if c is None:  # from host data: no evaluation (which a compiled trace would refuse)
        c = _COUNTERS[key] = mx.array(np.zeros(3 * _LINE, dtype=np.uint32))
    return c


_GATE_UP = ("D", "N", "BITS", "GROUP_SIZE", "R", "NB", "W")
_COMBINE = ("I", "D", "BITS", "GROUP_SIZE", "R", "NB", "S")


def _scope(prefix: str, names: tuple[str, ...]) -> str:
    return "".join(f"    constexpr int {n} = {prefix}{n};\n" for n in names)


def _l2_hints(mode: str) -> str:
    """Prefetch hints for the lines of a combine group's weights (rows ``row0 ..``, the
    warp's part), scales and biases, spread over the lanes; then the wait."""
    sb = "    zx_prefetch_l2(s0 + gb);\n    zx_prefetch_l2(s0 + gb + NG - 1);\n"
    if mode == "affine":
        sb += "    zx_prefetch_l2(b0 + gb);\n    zx_prefetch_l2(b0 + gb + NG - 1);\n"
    return f"""  for (int r = 0; r < R; ++r) {{
    const int row = row0 + r < D ? row0 + r : D - 1;
    const size_t wb = (size_t)(ex * D + row) * (NW * S) + ((int)warp % S) * NW;
    const size_t gb = (size_t)(ex * D + row) * (NG * S) + ((int)warp % S) * NG;
    for (int c = (int)lane; c <= NW / 32; c += 32) {{
      zx_prefetch_l2(w0 + wb + zx_imin(c * 32, NW - 1));
    }}
{sb}  }}
"""


@qk.text_cache
def fused_experts_kernel(kind: str, mode: str, down_mode: str, x_per_slot: bool,
                         has_bias: bool, has_down_bias: bool, has_shared: bool, has_gate: bool,
                         has_res: bool, prefetch: str = "l2",
                         order: str = "tickets") -> Kernel:  # fmt: skip
    """Gate/up with activation ``kind`` (:func:`.quant_kernels.split_matvec_parts`) and the
    exact combine (:func:`.moe_kernels.split_combine_parts`) in one launch (see the module
    docstring).

    Inputs: the gate/up kernel's (``x``, gate and up weights, ``idx``, ``bias_g``/``bias_u``,
    ``fp``), then the combine's but ``h`` (down weights ``w0, s0, b0``, ``wts``, ``bias``,
    ``shared``, ``sgate``, ``rx``, ``ra``), then ``ctr`` (:func:`counters`) and ``rt``.
    Outputs: ``h`` (the activations, ``(slots, I)``) and ``out``. Template constants: ``T``,
    ``P``, ``K``, the gate/up kernel's as ``G_D, G_N, G_BITS, G_GROUP_SIZE, G_R, G_NB, G_W``
    and the combine's as ``C_I, C_D, C_BITS, C_GROUP_SIZE, C_R, C_NB, C_S``. Runtime:
    ``rt[0]`` = tokens."""
    _, g_in, _, g_body = qk.split_matvec_parts(kind, mode, x_per_slot, has_bias, True)
    wait = f"""  if (lid == 0u) {{
    zx_wait_count(&zx_ctr[{_DONE}], (uint)zx_g1);
  }}
  zx_barrier();"""
    if prefetch not in ("l2", "registers", "none"):
        raise ValueError(
            f"[fused_experts] expected prefetch 'l2', 'registers' or 'none', got {prefetch!r}"
        )
    regs = prefetch == "registers"
    first = (_l2_hints(down_mode) if prefetch == "l2" else "") + wait
    _, c_in, c_body = mk.split_combine_parts(down_mode, has_down_bias, has_shared, has_gate,
                                             has_res, True, wait if regs else "",
                                             "" if regs else first)  # fmt: skip
    inputs = [n for n in g_in if n != "rt"] + [n for n in c_in if n not in ("h", "idx", "rt")]
    inputs += ["ctr", "rt"]
    # The parts' early exits leave their block (a jump past the end of every scope they
    # declare in), so all threads meet again below.
    g_body = g_body.replace("return;", "goto zx_gate_up_done;")
    c_body = c_body.replace("return;", "goto zx_combine_done;")
    if order not in ("tickets", "index"):
        raise ValueError(f"[fused_experts] expected order 'tickets' or 'index', got {order!r}")
    if order == "tickets":
        role = """  if (lid == 0u) {
    zx_tk[0] = zx_ticket(&zx_ctr[0]);
  }
  zx_barrier();
  const int zx_t = (int)zx_tk[0];"""
    else:
        role = "  const int zx_t = (int)gid;"
    body = f"""
  ZX_SHARED uint zx_tk[1];
  // Counters 128 bytes apart (own L2 lines): tickets, gate/up groups done, combine groups done.
  uint* zx_ctr = const_cast<uint*>(reinterpret_cast<const uint*>(ctr));
  const int zx_tokens = rt[0];
  const int zx_g1 = zx_tokens * K * G_NB;
  const int zx_g2 = zx_tokens * C_NB;
{role}
  if (zx_t < zx_g1) {{
    {{
{_scope("G_", _GATE_UP)}    const uint gid = (uint)zx_t;
    const int rt[1] = {{zx_tokens * K}};
    T* out = h;
{g_body}
    }}
  zx_gate_up_done:
    // The group's stores, then one thread's fence and count (as a grid barrier releases).
    zx_barrier();
    if (lid == 0u) {{
      zx_fence();
      zx_ticket(&zx_ctr[{_DONE}]);
    }}
  }} else {{
    {{
{_scope("C_", _COMBINE)}    const uint gid = (uint)(zx_t - zx_g1);
    const int rt[1] = {{zx_tokens}};
{c_body}
    }}
  zx_combine_done:
    zx_barrier();
    // The last combine group: every group has taken its ticket and every gate/up group has
    // counted itself done (the combine groups waited for it), so the counters are free.
    if (lid == 0u && zx_ticket(&zx_ctr[{_FIN}]) == (uint)(zx_g2 - 1)) {{
      zx_counter_reset(&zx_ctr[0]);
      zx_counter_reset(&zx_ctr[{_DONE}]);
      zx_counter_reset(&zx_ctr[{_FIN}]);
    }}
  }}
"""
    flags = "".join(
        f"_{n}" for n, on in (("bias", has_bias), ("dbias", has_down_bias),
                              ("shared", has_shared), ("sgate", has_gate), ("res", has_res))
        if on
    )  # fmt: skip
    name = (
        f"moe_experts_{kind}_{mode}_{down_mode}{'_xs' if x_per_slot else ''}{flags}_fused"
        f"_{prefetch}_{order}"
    )
    return Kernel(name, inputs, ["h", "out"], body, header=qk.HEADER)
