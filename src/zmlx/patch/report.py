"""``PatchReport``: what ``patch()`` replaced, what it skipped and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PatchReport:
    """The outcome of :func:`zmlx.patch.patch`.

    Attributes:
        family: the model family (mlx-lm ``model_type``) or ``"unknown"``.
        backend: the backend the patch was made for.
        replaced: ``(module path, pattern)`` for every replaced module.
        skipped: ``(module path, pattern, reason)`` for modules a pattern matched but did not
            replace (unsupported detail, excluded by the safety table, ...).
        notes: model-level messages (unknown model, forced patterns, ...).
        timings: filled by ``smart_patch``: per pattern, decode ms/token with and without.
    """

    family: str
    backend: str
    replaced: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.replaced)

    def patterns(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, p in self.replaced:
            out[p] = out.get(p, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "backend": self.backend,
            "replaced": [list(r) for r in self.replaced],
            "skipped": [list(s) for s in self.skipped],
            "patterns": self.patterns(),
            "notes": list(self.notes),
            "timings": self.timings,
        }

    def __str__(self) -> str:
        lines = [f"zmlx patch: family={self.family} backend={self.backend} "
                 f"replaced={self.count} skipped={len(self.skipped)}"]  # fmt: skip
        lines += [f"  note: {n}" for n in self.notes]
        if self.replaced:
            by = self.patterns()
            lines.append("  replaced: " + ", ".join(f"{p} x{n}" for p, n in sorted(by.items())))
            width = max(len(p) for p, _ in self.replaced)
            lines += [f"    {path:<{width}}  {pat}" for path, pat in self.replaced]
        if self.skipped:
            lines.append("  skipped:")
            seen: dict[tuple[str, str], list[str]] = {}
            for path, pat, why in self.skipped:
                seen.setdefault((pat, why), []).append(path)
            for (pat, why), paths in seen.items():
                where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
                lines.append(f"    {pat}: {why}  [{where}]")
        if self.timings:
            lines.append("  smart_patch timings (ms/token):")
            for p, t in self.timings.items():
                lines.append(f"    {p}: {t}")
        return "\n".join(lines)
