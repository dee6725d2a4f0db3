"""Model families as data: where the decoder blocks are and which linears each block holds.

The quantizer driver needs only this table; it never branches on a family name. Names are module paths
relative to the causal-LM model (`model.layers.3.self_attn.q_proj`).
"""
from __future__ import annotations

from dataclasses import dataclass

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj")


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one model family (Hugging Face module paths)."""

    family: str
    blocks: str = "model.layers"                      # ModuleList of decoder blocks
    # Sequential groups inside a block: a group's inputs depend only on earlier groups (true-sequential order).
    groups: tuple[tuple[str, ...], ...] = (_ATTN, ("self_attn.o_proj",), _MLP_IN, ("mlp.down_proj",))
    embed: str = "model.embed_tokens"                 # stays in floating point
    norm: str = "model.norm"
    lm_head: str = "lm_head"                          # stays in floating point (often tied to embed)

    @property
    def linears(self) -> tuple[str, ...]:
        """Every quantized linear of one block, in execution order."""
        return tuple(name for group in self.groups for name in group)

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks}.{index}"


# model_type (config.json) -> family. Gemma 2/3 text models use the same module names as Llama.
FAMILIES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "qwen2": ArchSpec("qwen2"),
    "mistral": ArchSpec("mistral"),
    "gemma": ArchSpec("gemma"),
    "gemma2": ArchSpec("gemma2"),
    "gemma3_text": ArchSpec("gemma3_text"),
}


def arch_for(model_type: str) -> ArchSpec:
    """The ArchSpec for a config's model_type; ValueError naming the supported families otherwise."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"unsupported model family {model_type!r}; supported: {', '.join(sorted(FAMILIES))}") \
            from None


def arch_of(model) -> ArchSpec:
    """The ArchSpec of a loaded Hugging Face causal-LM (by its config.model_type)."""
    return arch_for(getattr(model.config, "model_type", "<none>"))
