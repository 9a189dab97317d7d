"""An OpenVINO model of a Llama-family causal LM, built op by op from its PyTorch weights.

No tracing and no second environment: the graph is written here with OpenVINO's opsets,
in the stateful form OpenVINO GenAI's continuous-batching pipeline turns into paged
attention (inputs `input_ids`, `attention_mask`, `position_ids`, `beam_idx`; one
ReadValue/Assign variable per layer for keys and for values; `ScaledDotProductAttention`;
output `logits` for every position). The same model runs as a plain stateful model for
scoring.

Supported: the architectures whose decoder is Llama's (RMSNorm, rotary embeddings, grouped
query attention, a SiLU-gated MLP): llama, mistral (without a sliding window), qwen2
(biases on q/k/v) and qwen3 (RMSNorm on q and k). Anything else is refused with its name.

Weights: "fp32" keeps them exact; "fp16" halves them (computed in fp32); "int8" stores
each output row as unsigned 8-bit values with its own scale and zero point, which the
CPU plugin decompresses inside its matrix multiplication.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
WEIGHT_FORMATS = ("fp32", "fp16", "int8")


def check_supported(config: Any) -> None:
    """Raise a ValueError naming what makes `config` (a transformers config) unsupported."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"the openvino backend builds {', '.join(ARCHITECTURES)} models; this one is {arch!r} "
            "(use policy.backend=hf for it)"
        )
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"the openvino backend needs hidden_act silu, this {arch} model has {act!r}")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", arch == "mistral"):
        raise ValueError(f"the openvino backend has no sliding-window attention (model {arch}, window {window})")


def build_model(lm: Any, weights: str = "fp32"):
    """The `openvino.Model` of `lm` (a transformers causal LM of a supported architecture)
    with its weights stored as `weights` ("fp32", "fp16" or "int8")."""
    import openvino as ov

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    config = lm.config
    check_supported(config)
    state = {name: t.detach().float().cpu().numpy() for name, t in lm.state_dict().items()}
    builder = _Builder(config, state, weights, _rotary(lm))
    return builder.model(ov)


def build_value_model(lm: Any, head_weight: np.ndarray, head_bias: np.ndarray, weights: str = "fp32"):
    """A stateless `openvino.Model` of `lm`'s decoder topped by a scalar value head
    (`head_weight` [1, hidden], `head_bias` [1]). A PRM's forward pass over new tokens
    after cached ones, for scoring on the CPU plugin:

    - inputs `input_ids`, `position_ids` ([batch, new]); `attention_mask` ([batch,
      past + new]: 0 over padding, in the past or the new part); `past.{layer}.key` and
      `past.{layer}.value` ([batch, kv_heads, past, head_dim], past may be 0): the keys
      and values of the tokens before, as this model returned them;
    - outputs `values`, the value logit at every new position ([batch, new]), and
      `present.{layer}.key` / `present.{layer}.value`, the new tokens' keys and values
      ([batch, kv_heads, new, head_dim], after the rotary embedding)."""
    import openvino as ov

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    config = lm.config
    check_supported(config)
    state = {name: t.detach().float().cpu().numpy() for name, t in lm.state_dict().items()}
    state["value_head.weight"] = np.asarray(head_weight, dtype=np.float32).reshape(1, -1)
    state["value_head.bias"] = np.asarray(head_bias, dtype=np.float32).reshape(1)
    builder = _Builder(config, state, weights, _rotary(lm), stateless=True)
    return builder.value_model(ov)


def _rotary(lm: Any) -> tuple[np.ndarray, float]:
    """The rotary inverse frequencies and their output scaling, as the model computes them
    (so scaled variants such as llama3's come out right)."""
    rotary = getattr(getattr(lm, "model", lm), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise ValueError("the openvino backend needs the model's rotary embedding (model.rotary_emb.inv_freq)")
    kind = getattr(rotary, "rope_type", "default")
    if kind == "dynamic":
        raise ValueError("the openvino backend has no dynamic rotary scaling")
    inv_freq = rotary.inv_freq.detach().float().cpu().numpy()
    return inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


class _Builder:
    """Writes the graph; one method per block of the decoder."""

    def __init__(self, config: Any, state: dict[str, np.ndarray], weights: str, rotary, stateless: bool = False):
        import openvino.opset13 as ops

        self.stateless = stateless  # no KV-cache variables: past keys and values are inputs, new ones outputs
        self.past_inputs: list[Any] = []
        self.present_outputs: list[Any] = []
        self.ops = ops
        self.config = config
        self.state = state
        self.weights = weights
        self.inv_freq, self.rope_scaling = rotary
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self._constants: dict[str, Any] = {}

    # -- small pieces ---------------------------------------------------------------------

    def i64(self, values) -> Any:
        return self.ops.constant(np.array(values, dtype=np.int64))

    def f32(self, values) -> Any:
        return self.ops.constant(np.array(values, dtype=np.float32))

    def weight(self, name: str) -> Any:
        """The weight `name` as an f32 tensor in the graph, stored in the chosen format
        (each tensor once, however often it is used: tied embeddings share one)."""
        array = self.state[name]
        key = f"{array.__array_interface__['data'][0]}:{array.shape}"
        if key in self._constants:
            return self._constants[key]
        ops = self.ops
        if self.weights == "fp32" or array.ndim < 2:
            node = ops.constant(np.ascontiguousarray(array, dtype=np.float32))
        elif self.weights == "fp16":
            node = ops.convert(ops.constant(array.astype(np.float16)), "f32")
        else:
            quantized, zero, scale = quantize_rows(array)
            values = ops.convert(ops.constant(quantized), "f32")
            centred = ops.subtract(values, ops.convert(ops.constant(zero), "f32"))
            node = ops.multiply(centred, ops.constant(scale))
        self._constants[key] = node
        return node

    def linear(self, x, prefix: str):
        ops = self.ops
        out = ops.matmul(x, self.weight(prefix + ".weight"), transpose_a=False, transpose_b=True)
        if prefix + ".bias" in self.state:
            out = ops.add(out, self.weight(prefix + ".bias"))
        return out

    def rms_norm(self, x, name: str):
        ops = self.ops
        variance = ops.reduce_mean(ops.multiply(x, x), self.i64([-1]), keep_dims=True)
        inverse = ops.divide(self.f32(1.0), ops.sqrt(ops.add(variance, self.f32(self.eps))))
        return ops.multiply(ops.multiply(x, inverse), self.weight(name))

    def heads_first(self, x, heads: int, norm: Optional[str] = None):
        """[B, T, heads*D] -> [B, heads, T, D], with an optional per-head RMSNorm (qwen3)."""
        ops = self.ops
        x = ops.reshape(x, self.i64([0, 0, heads, self.head_dim]), special_zero=True)
        if norm is not None and norm in self.state:
            x = self.rms_norm(x, norm)
        return ops.transpose(x, self.i64([0, 2, 1, 3]))

    def rotate(self, x, cos, sin):
        ops = self.ops
        half = self.head_dim // 2
        first = ops.slice(x, self.i64([0]), self.i64([half]), self.i64([1]), self.i64([3]))
        second = ops.slice(x, self.i64([half]), self.i64([self.head_dim]), self.i64([1]), self.i64([3]))
        rotated = ops.concat([ops.negative(second), first], axis=-1)
        return ops.add(ops.multiply(x, cos), ops.multiply(rotated, sin))

    # -- blocks ---------------------------------------------------------------------------

    def rotary_tables(self, position_ids, batch):
        """cos and sin of every position, shaped [B, 1, T, D]."""
        ops = self.ops
        inv_freq = self.f32(self.inv_freq.reshape(1, -1, 1))
        inv_freq = ops.broadcast(inv_freq, ops.concat([batch, self.i64([1]), self.i64([1])], 0), broadcast_spec="BIDIRECTIONAL")
        positions = ops.convert(ops.unsqueeze(position_ids, self.i64(1)), "f32")  # [B, 1, T]
        freqs = ops.transpose(ops.matmul(inv_freq, positions, False, False), self.i64([0, 2, 1]))
        angles = ops.concat([freqs, freqs], axis=-1)
        cos, sin = ops.cos(angles), ops.sin(angles)
        if self.rope_scaling != 1.0:
            cos = ops.multiply(cos, self.f32(self.rope_scaling))
            sin = ops.multiply(sin, self.f32(self.rope_scaling))
        return ops.unsqueeze(cos, self.i64(1)), ops.unsqueeze(sin, self.i64(1))

    def attention_mask(self, attention_mask, input_ids):
        """Additive mask [B, 1, T, S]: a query at position past+t sees keys 0..past+t that
        the attention mask keeps."""
        ops = self.ops
        total = ops.gather(ops.shape_of(attention_mask), self.i64(1), self.i64(0))
        length = ops.gather(ops.shape_of(input_ids), self.i64(1), self.i64(0))
        past = ops.subtract(total, length)
        queries = ops.unsqueeze(ops.range(past, total, self.i64(1), "i64"), self.i64(1))  # [T, 1]
        keys = ops.unsqueeze(ops.range(self.i64(0), total, self.i64(1), "i64"), self.i64(0))  # [1, S]
        causal = ops.less_equal(keys, queries)
        kept = ops.not_equal(attention_mask, self.i64(0))
        kept = ops.unsqueeze(kept, self.i64([1, 2]))  # [B, 1, 1, S]
        allowed = ops.logical_and(causal, kept)
        lowest = float(np.finfo(np.float32).min)
        return ops.select(allowed, self.f32(0.0), self.f32(lowest))

    def cache(self, layer: int, kind: str, new, batch, beam_idx):
        """Concatenate the new keys (values) to the layer's cached ones, reordered by
        `beam_idx`; returns the full tensor and the Assign that stores it (in a stateless
        model the cached ones are an input, the new ones an output, and there is no Assign)."""
        import openvino as ov

        ops = self.ops
        if self.stateless:
            past = self.parameter(ov, f"past.{layer}.{kind}", [-1, self.kv_heads, -1, self.head_dim], ov.Type.f32)
            present = ops.result(new)
            present.output(0).get_tensor().set_names({f"present.{layer}.{kind}"})
            self.past_inputs.append(past)
            self.present_outputs.append(present)
            return ops.concat([past, new], axis=2), None
        name = f"past_key_values.{layer}.{kind}present.{layer}.{kind}"
        shape = ops.concat([batch, self.i64([self.kv_heads, 0, self.head_dim])], 0)
        empty = ops.broadcast(self.f32(0.0), shape)
        info = ov.op.util.VariableInfo()
        info.data_shape = ov.PartialShape([-1, self.kv_heads, -1, self.head_dim])
        info.data_type = ov.Type.f32
        info.variable_id = name
        variable = ov.op.util.Variable(info)
        past = ops.gather(ops.read_value(empty, variable), beam_idx, self.i64(0))
        full = ops.concat([past, new], axis=2)
        return full, ops.assign(full, variable)

    def repeat_kv(self, x):
        """[B, Hkv, S, D] -> [B, H, S, D] for grouped query attention."""
        if self.kv_heads == self.heads:
            return x
        ops = self.ops
        groups = self.heads // self.kv_heads
        x = ops.unsqueeze(x, self.i64(2))
        x = ops.broadcast(x, self.i64([1, 1, groups, 1, 1]), broadcast_spec="BIDIRECTIONAL")
        return ops.reshape(x, self.i64([0, self.heads, -1, self.head_dim]), special_zero=True)

    def layer(self, i: int, hidden, mask, cos, sin, batch, beam_idx):
        ops = self.ops
        p = f"model.layers.{i}"
        x = self.rms_norm(hidden, f"{p}.input_layernorm.weight")
        q = self.heads_first(self.linear(x, f"{p}.self_attn.q_proj"), self.heads, f"{p}.self_attn.q_norm.weight")
        k = self.heads_first(self.linear(x, f"{p}.self_attn.k_proj"), self.kv_heads, f"{p}.self_attn.k_norm.weight")
        v = self.heads_first(self.linear(x, f"{p}.self_attn.v_proj"), self.kv_heads)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        k, k_assign = self.cache(i, "key", k, batch, beam_idx)
        v, v_assign = self.cache(i, "value", v, batch, beam_idx)
        scale = self.f32(self.head_dim**-0.5)
        context = ops.scaled_dot_product_attention(q, self.repeat_kv(k), self.repeat_kv(v), mask, scale, causal=False)
        context = ops.transpose(context, self.i64([0, 2, 1, 3]))
        context = ops.reshape(context, self.i64([0, 0, self.heads * self.head_dim]), special_zero=True)
        hidden = ops.add(hidden, self.linear(context, f"{p}.self_attn.o_proj"))
        x = self.rms_norm(hidden, f"{p}.post_attention_layernorm.weight")
        gate = ops.swish(self.linear(x, f"{p}.mlp.gate_proj"))
        hidden = ops.add(hidden, self.linear(ops.multiply(gate, self.linear(x, f"{p}.mlp.up_proj")), f"{p}.mlp.down_proj"))
        return hidden, [a for a in (k_assign, v_assign) if a is not None]

    def parameter(self, ov, name: str, shape, dtype):
        node = self.ops.parameter(ov.PartialShape(shape), dtype, name=name)
        node.output(0).get_tensor().set_names({name})
        return node

    def decoder(self, input_ids, attention_mask, position_ids, beam_idx):
        """The final hidden states [B, T, hidden] and the cache Assigns (none if stateless)."""
        ops = self.ops
        batch = ops.gather(ops.shape_of(input_ids), self.i64([0]), self.i64(0))
        hidden = ops.gather(self.weight("model.embed_tokens.weight"), input_ids, self.i64(0))
        cos, sin = self.rotary_tables(position_ids, batch)
        mask = self.attention_mask(attention_mask, input_ids)
        sinks = []
        for i in range(int(self.config.num_hidden_layers)):
            hidden, assigns = self.layer(i, hidden, mask, cos, sin, batch, beam_idx)
            sinks += assigns
        return self.rms_norm(hidden, "model.norm.weight"), sinks

    def model(self, ov):
        ops = self.ops
        input_ids = self.parameter(ov, "input_ids", [-1, -1], ov.Type.i64)
        attention_mask = self.parameter(ov, "attention_mask", [-1, -1], ov.Type.i64)
        position_ids = self.parameter(ov, "position_ids", [-1, -1], ov.Type.i64)
        beam_idx = self.parameter(ov, "beam_idx", [-1], ov.Type.i32)
        hidden, sinks = self.decoder(input_ids, attention_mask, position_ids, beam_idx)
        head = "lm_head.weight" if "lm_head.weight" in self.state else "model.embed_tokens.weight"
        logits = ops.matmul(hidden, self.weight(head), transpose_a=False, transpose_b=True)
        result = ops.result(logits)
        result.output(0).get_tensor().set_names({"logits"})
        return ov.Model([result], sinks, [input_ids, attention_mask, position_ids, beam_idx], "treesearch_lm")

    def value_model(self, ov):
        ops = self.ops
        input_ids = self.parameter(ov, "input_ids", [-1, -1], ov.Type.i64)
        attention_mask = self.parameter(ov, "attention_mask", [-1, -1], ov.Type.i64)
        position_ids = self.parameter(ov, "position_ids", [-1, -1], ov.Type.i64)
        hidden, _ = self.decoder(input_ids, attention_mask, position_ids, None)
        values = ops.squeeze(self.linear(hidden, "value_head"), self.i64([2]))
        result = ops.result(values)
        result.output(0).get_tensor().set_names({"values"})
        return ov.Model([result, *self.present_outputs], [], [input_ids, attention_mask, position_ids, *self.past_inputs],
                        "treesearch_prm")


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 8-bit quantization per output row: `(q, zero, scale)` with
    `weight ~= (q - zero) * scale`, q and zero uint8 ([out, in] and [out, 1]), scale f32."""
    low = np.minimum(weight.min(axis=1, keepdims=True), 0.0)
    high = np.maximum(weight.max(axis=1, keepdims=True), 0.0)
    scale = (high - low) / 255.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, 255)
    quantized = np.clip(np.round(weight / scale) + zero, 0, 255)
    return quantized.astype(np.uint8), zero.astype(np.uint8), scale


