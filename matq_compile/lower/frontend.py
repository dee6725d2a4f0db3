"""Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2-style GQA) as a Relax module built with relax.frontend.nn.

Why relax.frontend.nn and not torch.export/ONNX import: the module mirrors the HF module tree, so every Relax
parameter carries its HF name (`model.layers.0.self_attn.q_proj.weight`) and the lowering pass finds a quantized
linear by name, not by pattern; shapes stay symbolic in the prompt length; and the KV cache can be a static tensor
written in place (call_tir_inplace), so a decode step copies nothing and the C++ runner just passes two buffers.

Exported functions (weights are trailing parameters, in `param_names` order):
    prefill(ids int32[1, n], pos: Shape[p], last: Shape[r], kt_cache, v_cache) -> (logits[1, V] of row r, kt, v)
    decode (ids int32[1, 1], pos: Shape[p], kt_cache, v_cache) -> (logits[1, V], kt, v)  (static M = 1)
    score  (ids int32[1, n], pos: Shape[p], kt_cache, v_cache) -> (logits[n, V] of every token, kt, v)
`pos` is the number of tokens already in the cache; the caller keeps pos + n <= max_seq_len.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from matq_compile._tvm import i64, tvm
from matq_compile.lower import kv_cache, llama_fused as fused, llama_kernels as lk
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class LlamaConfig:
    """The HF config fields the graph depends on, validated."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool = False  # q/k/v biases
    o_bias: bool = False  # o_proj bias (Llama with attention_bias; never in Qwen2)
    max_seq_len: int = 1024  # static KV-cache length (multiple of 16)
    kv_dtype: str = "float32"  # KV-cache elements (kv_cache.DTYPES)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.max_seq_len <= 0 or self.max_seq_len % kv_cache.TILE:
            raise ValueError(f"max_seq_len must be a positive multiple of {kv_cache.TILE}, got {self.max_seq_len}")
        kv_cache.check_dtype(self.kv_dtype)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], max_seq_len: int = 1024, kv_dtype: str = "float32") -> LlamaConfig:
        family = cfg.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"unsupported model_type {family!r}; supported: {', '.join(FAMILIES)}")
        for key in ("rope_scaling", "rope_parameters"):  # transformers < 5 / >= 5 spelling
            rope = cfg.get(key) or {}
            if rope.get("rope_type", rope.get("type")) not in (None, "default"):
                raise ValueError(f"{key} {rope!r} is not supported (only the default RoPE)")
        if cfg.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
        heads = int(cfg["num_attention_heads"])
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                   intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
                   num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
                   rms_norm_eps=float(cfg["rms_norm_eps"]), rope_theta=float(theta),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   attention_bias=bool(cfg.get("attention_bias", family == "qwen2")),
                   o_bias=family != "qwen2" and bool(cfg.get("attention_bias", False)), max_seq_len=max_seq_len,
                   kv_dtype=kv_dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def cache_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(K^T cache, V cache) shapes (lower/kv_cache.py)."""
        return kv_cache.cache_shapes(self.num_layers, self.num_kv_heads, self.head_dim, self.max_seq_len)


def _kernels(c: LlamaConfig, gpu: bool) -> dict[str, Any]:
    """The Llama TIR kernels, parsed once per model (TVMScript parsing costs ~0.1 s per function)."""
    from matq_compile.lower.kernels import hand_scheduled

    dims = (c.num_layers, c.num_kv_heads, c.head_dim, c.max_seq_len)
    funcs = {"rope_table": lk.rope_table_func(c.head_dim, c.rope_theta, gpu), "rope": lk.rope_func(c.head_dim, gpu),
             "k_write": lk.k_write_func(*dims, gpu=gpu, dtype=c.kv_dtype),
             "v_write": lk.v_write_func(*dims, gpu=gpu, dtype=c.kv_dtype),
             "select_row": lk.select_row_func(c.hidden_size, gpu),
             "attention": lk.attention_func(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.max_seq_len,
                                            gpu, c.kv_dtype)}
    if not gpu:  # a vectorised exp, and the steps between the linears fused (on CUDA: legalized ops and dlight)
        funcs["silu_mul"] = lk.silu_mul_func(c.intermediate_size)
        funcs["add_rms_norm"] = fused.add_rms_norm_func(c.hidden_size, c.rms_norm_eps)
        funcs["qkv_rope_write"] = fused.qkv_rope_write_func(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
                                                            c.max_seq_len, c.kv_dtype)
    return {name: hand_scheduled(f) for name, f in funcs.items()}


def _add_norm(kernels: dict[str, Any], x: nn.Tensor, a: nn.Tensor, norm: nn.RMSNorm) -> tuple:
    """(x + a, norm(x + a)): the residual stream and the next step's input, in one call where the CPU kernel is."""
    if "add_rms_norm" in kernels:
        return op.tensor_ir_inplace_op(kernels["add_rms_norm"], "add_rms_norm", [x, a, norm.weight], [0, -1],
                                       [nn.Tensor.placeholder(x.shape, "float32")] * 2)
    x = x + a
    return x, norm(x)


class _Attention(nn.Module):
    def __init__(self, c: LlamaConfig, kernels: dict[str, Any]) -> None:
        self.c, self.kernels = c, kernels
        qd, kvd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, qd, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, kvd, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, kvd, bias=c.attention_bias)
        self.o_proj = nn.Linear(qd, c.hidden_size, bias=c.o_bias)

    def forward(self, x: nn.Tensor, kt: nn.Tensor, vc: nn.Tensor, layer: int, pos, rot: tuple) -> tuple:
        c, n, kern = self.c, x.shape[0], self.kernels
        if "qkv_rope_write" in kern:
            shapes = c.cache_shapes
            qkv = op.concat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # see llama_fused
            kt, vc, q = op.tensor_ir_inplace_op(
                kern["qkv_rope_write"], "qkv_rope_write", [qkv, *rot, kt, vc, i64(layer), pos], [3, 4, -1],
                [nn.Tensor.placeholder(shapes[0], c.kv_dtype), nn.Tensor.placeholder(shapes[1], c.kv_dtype),
                 nn.Tensor.placeholder([n, c.num_heads, c.head_dim], "float32")])
            return self._attend(q, kt, vc, layer, pos)
        rope = kern["rope"]
        q = op.reshape(self.q_proj(x), [n, c.num_heads, c.head_dim])
        k = op.reshape(self.k_proj(x), [n, c.num_kv_heads, c.head_dim])
        v = op.reshape(self.v_proj(x), [n, c.num_kv_heads, c.head_dim])
        q = op.tensor_ir_op(rope, "rope", [q, *rot], out=nn.Tensor.placeholder(q.shape, "float32"))
        k = op.tensor_ir_op(rope, "rope", [k, *rot], out=nn.Tensor.placeholder(k.shape, "float32"))
        shapes = c.cache_shapes
        kt = op.tensor_ir_inplace_op(kern["k_write"], "k_write", [kt, k, i64(layer), pos], 0,
                                     nn.Tensor.placeholder(shapes[0], c.kv_dtype))
        vc = op.tensor_ir_inplace_op(kern["v_write"], "v_write", [vc, v, i64(layer), pos], 0,
                                     nn.Tensor.placeholder(shapes[1], c.kv_dtype))
        return self._attend(q, kt, vc, layer, pos)

    def _attend(self, q: nn.Tensor, kt: nn.Tensor, vc: nn.Tensor, layer: int, pos) -> tuple:
        c = self.c
        o = op.tensor_ir_op(self.kernels["attention"], "attention", [q, kt, vc, i64(layer), pos],
                            out=nn.Tensor.placeholder([q.shape[0], c.num_heads * c.head_dim], "float32"))
        return self.o_proj(o), kt, vc


class _MLP(nn.Module):
    def __init__(self, c: LlamaConfig, kernels: dict[str, Any]) -> None:
        self.kernels = kernels
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if "silu_mul" not in self.kernels:
            return self.down_proj(op.silu(gate) * up)
        return self.down_proj(op.tensor_ir_op(self.kernels["silu_mul"], "silu_mul", [op.concat([gate, up], dim=-1)],
                                              out=nn.Tensor.placeholder(gate.shape, "float32")))


class _Block(nn.Module):
    def __init__(self, c: LlamaConfig, layer: int, kernels: dict[str, Any]) -> None:
        self.layer, self.kernels = layer, kernels
        self.self_attn = _Attention(c, kernels)
        self.mlp = _MLP(c, kernels)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, axes=-1, epsilon=c.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, axes=-1, epsilon=c.rms_norm_eps, bias=False)

    def forward(self, x: nn.Tensor, h: nn.Tensor, kt: nn.Tensor, vc: nn.Tensor, pos, rot: tuple,
                next_norm: nn.RMSNorm) -> tuple:
        """x: the residual stream, h = input_layernorm(x) -> (x', next_norm(x'), kt, vc): the norm of the next
        block (or the final norm) is applied here, so that it shares a call with the residual add."""
        a, kt, vc = self.self_attn(h, kt, vc, self.layer, pos, rot)
        x, h = _add_norm(self.kernels, x, a, self.post_attention_layernorm)
        x, h = _add_norm(self.kernels, x, self.mlp(h), next_norm)
        return x, h, kt, vc


class _Body(nn.Module):
    def __init__(self, c: LlamaConfig, kernels: dict[str, Any]) -> None:
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([_Block(c, i, kernels) for i in range(c.num_layers)])
        self.norm = nn.RMSNorm(c.hidden_size, axes=-1, epsilon=c.rms_norm_eps, bias=False)


class LlamaModel(nn.Module):
    """HF-named module tree: `model.*` and (untied) `lm_head`."""

    def __init__(self, c: LlamaConfig, gpu: bool = False) -> None:
        self.c, self.kernels = c, _kernels(c, gpu)
        self.model = _Body(c, self.kernels)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def _hidden(self, ids: nn.Tensor, pos, kt: nn.Tensor, vc: nn.Tensor) -> tuple:
        n = ids.shape[1]
        x = op.take(self.model.embed_tokens.weight, op.reshape(ids, [n]), axis=0)
        half = self.c.head_dim // 2
        rot = op.tensor_ir_op(self.kernels["rope_table"], "rope_table", [pos],
                              out=[nn.Tensor.placeholder([n, half], "float32")] * 2)
        layers = list(self.model.layers)
        h = layers[0].input_layernorm(x) if layers else x
        for i, block in enumerate(layers):
            nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.norm
            x, h, kt, vc = block(x, h, kt, vc, pos, tuple(rot), nxt)
        return h if layers else self.model.norm(x), kt, vc

    def _logits(self, x: nn.Tensor) -> nn.Tensor:
        if self.c.tie_word_embeddings:
            return op.matmul(x, op.permute_dims(self.model.embed_tokens.weight))
        return self.lm_head(x)

    def prefill(self, ids: nn.Tensor, pos, last, kt_cache: nn.Tensor, v_cache: nn.Tensor) -> tuple:
        x, kt, vc = self._hidden(ids, pos, kt_cache, v_cache)
        last = op.tensor_ir_op(self.kernels["select_row"], "select_row", [x, last],
                               out=nn.Tensor.placeholder([1, self.c.hidden_size], "float32"))
        return self._logits(last), kt, vc

    def extend(self, ids: nn.Tensor, pos, kt_cache: nn.Tensor, v_cache: nn.Tensor) -> tuple:
        """prefill without the logits, for every chunk of a prompt but its last (the LM head is the largest
        matrix of a small model: 28 MB for SmolLM2, read once per call)."""
        _, kt, vc = self._hidden(ids, pos, kt_cache, v_cache)
        return kt, vc

    def decode(self, ids: nn.Tensor, pos, kt_cache: nn.Tensor, v_cache: nn.Tensor) -> tuple:
        x, kt, vc = self._hidden(ids, pos, kt_cache, v_cache)
        return self._logits(x), kt, vc

    def score(self, ids: nn.Tensor, pos, kt_cache: nn.Tensor, v_cache: nn.Tensor) -> tuple:
        x, kt, vc = self._hidden(ids, pos, kt_cache, v_cache)
        return self._logits(x), kt, vc


def build_llama(c: LlamaConfig, chunk: int | str = "n",
                functions: tuple[str, ...] = ("prefill", "extend", "decode", "score"),
                gpu: bool = False) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...], str]]]:
    """Relax IRModule of the decoder and its parameters [(HF name, shape, dtype)] in argument order.

    chunk: tokens per prefill/score call, static (an int: the linears get a tuned static-M kernel; the caller
    pads the last chunk) or symbolic (a name: dynamic-M kernels). gpu: CUDA variants of the Llama kernels.
    """
    kt_shape, v_shape = c.cache_shapes
    caches = {"kt_cache": nn.spec.Tensor(list(kt_shape), c.kv_dtype),
              "v_cache": nn.spec.Tensor(list(v_shape), c.kv_dtype)}
    ids = nn.spec.Tensor([1, chunk], "int32")
    specs = {"prefill": {"ids": ids, "pos": nn.spec.Int(), "last": nn.spec.Int(), **caches},
             "extend": {"ids": ids, "pos": nn.spec.Int(), **caches},
             "decode": {"ids": nn.spec.Tensor([1, 1], "int32"), "pos": nn.spec.Int(), **caches},
             "score": {"ids": ids, "pos": nn.spec.Int(), **caches}}
    unknown = set(functions) - set(specs)
    if unknown:
        raise ValueError(f"unknown functions {sorted(unknown)}; known: {sorted(specs)}")
    mod, named = LlamaModel(c, gpu).export_tvm(spec={f: specs[f] for f in functions})
    params = [(name, tuple(int(s) for s in p.shape), str(p.dtype)) for name, p in named]
    return mod, params
