"""Proposers: where new candidates come from.

* :class:`MutationProposer` (default, offline): one knob of the parent moved to a neighbouring
  value (prior 1) or to any other value (prior 0.5), never a candidate already in the tree.
* :class:`LLMProposer`: asks a language model, either any OpenAI-compatible
  ``/v1/chat/completions`` endpoint (plain ``urllib``) or a local mlx-lm model, for knobs and
  optionally a rewritten kernel body, given the op, the current candidate and what was tried
  so far. A reply it cannot use (no answer, not JSON, a candidate already tried) is logged in
  the session's events and the step falls back to a mutation.

Every proposal still goes through the static checks and the correctness checks.
"""

from __future__ import annotations

import json
import os
import random
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .safety import BANNED, SHARED_LIMIT
from .session import Node, Session
from .target import Target, candidate_key


@dataclass
class Proposal:
    knobs: dict[str, Any]
    body: str | None = None
    prior: float = 1.0
    note: str = ""
    source: str = "mutate"


class MutationProposer:
    """Moves one knob of the parent (see the module docstring)."""

    name = "mutate"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def options(self, session: Session, target: Target, node: Node) -> list[Proposal]:
        base = {**session.defaults, **node.knobs}
        seen = session.keys()
        kernel = target.kernel_for(base) if node.body is not None else None
        out = []
        for k, values in target.space.values.items():
            values = list(values)
            i = values.index(base[k]) if base.get(k) in values else -1
            for j, v in enumerate(values):
                if j == i:
                    continue
                knobs = {**base, k: v}
                if target.space.check(target.args0, knobs) is not None:
                    continue
                if candidate_key(knobs, node.body) in seen:
                    continue
                if kernel is not None and target.kernel_for(knobs) is not kernel:
                    continue  # the parent's rewrite belongs to another kernel
                near = i < 0 or abs(j - i) == 1
                out.append(Proposal(knobs, node.body, 1.0 if near else 0.5,
                                    f"{k}: {base.get(k)} -> {v}", self.name))  # fmt: skip
        return out

    def propose(self, session: Session, target: Target, node: Node) -> Proposal | None:
        opts = self.options(session, target, node)
        if not opts:
            return None
        return self.rng.choices(opts, weights=[o.prior for o in opts])[0]


SYSTEM_PROMPT = f"""You tune GPU kernels of zmlx, a library of fused kernels for MLX.
A kernel body is written once in zmlx's portable C++ dialect and rendered for CUDA and Metal.
Names a body may use: tid, lid, gid, lsize (threads per group), lane, warp, ZX_SHARED (declares
shared memory arrays), zx_barrier(), zx_warp_sum/max/min(v), zx_block_sum/max/min(v, buf),
zx_shfl_xor(v, mask), zx_exp, zx_log, zx_rsqrt and the other zx_ math helpers,
static_cast<float>(x[i]) to read an input, static_cast<O>(v) to write the output type O.
Template constants (such as VEC or C) arrive from the launch knobs.
Rules (a candidate that breaks one is rejected before it compiles):
- every loop must be bounded (no while (true), no for (;;));
- at most {SHARED_LIMIT} bytes of shared memory per group; array sizes must be constants;
- threads per group: a multiple of 32 and at most 1024; every lane of a warp must reach each
  shuffle, and every thread of a group each barrier;
- bounds-check every memory access (whole groups are launched);
- never write to inputs; keep the body's input and output names;
- none of: {", ".join(sorted(BANNED))}, and no preprocessor directives except #pragma unroll.
Reply with one JSON object and nothing else:
{{"knobs": {{...}}, "body": null or "the complete new kernel body", "reason": "one line"}}
"knobs" must use the knob names and allowed values given. Use "body": null to keep the
current body. Propose something not tried yet."""


def _history(session: Session, limit: int = 12) -> list[dict[str, Any]]:
    done = [n for n in session.nodes if n.status != "pending"]
    done.sort(key=lambda n: (-n.value(), n.id))
    rows = []
    for n in done[:limit]:
        row: dict[str, Any] = {"knobs": n.knobs, "rewrite": n.body is not None,
                               "status": n.status}  # fmt: skip
        if n.speedup is not None:
            row["speedup_vs_catalog"] = round(n.speedup, 3)
        if n.reasons or n.error:
            row["why"] = "; ".join(n.reasons)[:200] or n.error[:200]
        rows.append(row)
    return rows


def build_messages(session: Session, target: Target, node: Node) -> list[dict[str, str]]:
    """The chat messages an LLM proposer sends for a child of ``node``."""
    knobs = {**session.defaults, **node.knobs}
    kernel = target.kernel_for(knobs) or target.kernel
    body = node.body if node.body is not None else kernel.body
    user = {
        "target": target.describe(),
        "runner": session.runner,
        "current": {"knobs": knobs, "body": body},
        "tried": _history(session),
    }
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(user, indent=1)},
    ]


def parse_reply(text: str, node: Node) -> Proposal:
    """A proposal from an LLM's reply (the first JSON object in it; a ```json block wins)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    blob = fenced.group(1) if fenced else text[text.find("{") : text.rfind("}") + 1]
    try:
        data = json.loads(blob)
    except json.JSONDecodeError:
        raise ValueError(f"no JSON object in the reply: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    knobs = data.get("knobs", {})
    if not isinstance(knobs, dict):
        raise ValueError(f"expected 'knobs' to be an object, got {knobs!r:.80}")
    body = data["body"] if "body" in data else node.body
    if body is not None and not isinstance(body, str):
        raise ValueError("expected 'body' to be a string or null")
    note = str(data.get("reason", ""))[:300]
    return Proposal({**node.knobs, **knobs}, body, 1.0, note, "llm")


def chat_url(url: str) -> str:
    """``url`` completed to the chat completions route of an OpenAI-compatible server."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class LLMProposer:
    """Asks a language model for candidates (see the module docstring).

    Args:
        url: base URL of an OpenAI-compatible server (``http://host:port`` or ``.../v1``).
        model: the model name sent to the server.
        local_model: a local mlx-lm model path or id, used when no ``url`` is given.
        timeout: seconds to wait for a reply.
        api_key_env: environment variable holding a bearer token, if the server needs one.
        fallback: used when a reply cannot be used.
    """

    name = "llm"

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str = "default",
        local_model: str | None = None,
        timeout: float = 120.0,
        temperature: float = 0.7,
        max_tokens: int = 2048,
        api_key_env: str = "ZMLX_LLM_API_KEY",
        fallback: MutationProposer | None = None,
    ) -> None:
        if url is None and local_model is None:
            raise ValueError("[discover] the llm proposer needs --llm-url or --llm-model-path")
        self.url = chat_url(url) if url else None
        self.model, self.local_model = model, local_model
        self.timeout, self.temperature, self.max_tokens = timeout, temperature, max_tokens
        self.api_key_env = api_key_env
        self.fallback = fallback or MutationProposer()
        self._local = None

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's reply to ``messages``."""
        if self.url is None:
            return self._complete_local(messages)
        payload = {"model": self.model, "messages": messages,
                   "temperature": self.temperature, "max_tokens": self.max_tokens}  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        req = urllib.request.Request(self.url, json.dumps(payload).encode(), headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            data = json.loads(r.read())
        return data["choices"][0]["message"]["content"]

    def _complete_local(self, messages: list[dict[str, str]]) -> str:
        from mlx_lm import generate, load

        if self._local is None:
            self._local = load(self.local_model)
        model, tok = self._local
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            prompt = (
                "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            )
        return generate(model, tok, prompt=prompt, max_tokens=self.max_tokens, verbose=False)

    def propose(self, session: Session, target: Target, node: Node) -> Proposal | None:
        try:
            text = self.complete(build_messages(session, target, node))
            prop = parse_reply(text, node)
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as e:
            session.event("llm_unusable", node=node.id, error=f"{type(e).__name__}: {e}"[:500])
            return self.fallback.propose(session, target, node)
        if candidate_key({**session.defaults, **prop.knobs}, prop.body) in session.keys():
            session.event("llm_duplicate", node=node.id, knobs=prop.knobs)
            return self.fallback.propose(session, target, node)
        return prop
