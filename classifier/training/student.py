"""The fast student: static token embeddings, masked mean/max, optional context, a small MLP trunk and one head per schema head.

The student reads the same ``input_ids``/``attention_mask`` as the teacher, so it is served by the
same runtime from the same bundle format. Its token table is distilled from the fine-tuned
encoder (model2vec-style: every vocabulary token is embedded on its own by the teacher, then
reduced with PCA), and the whole student is then trained on labels and teacher soft targets
(see ``distillation``). This module holds the network and its ONNX graph; it does not train.

**Context.** A bag of token vectors cannot tell "Smith" in "my name is Smith, call me" from "Smith"
in "Adam Smith's Wealth of Nations". With ``context_channels > 0`` the student also runs one
1-D convolution (``context_kernel`` taps, ``context_dilation`` apart) over the token vectors,
ReLU, and masked mean/max pools it beside the plain pools. The convolution is linear in the
token table, so the ONNX graph folds it: one table per tap, ``T_i[v] = E[v] W_i``, gathered at
the token ids shifted by that tap's offset, and summed. Serving a window of k tokens therefore
costs k gathers and additions of ``context_channels`` floats per token, not a matrix product
(the bundle grows by ``k * context_channels`` floats per vocabulary token).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from classifier.data.schema import LabelSchema
from classifier.errors import ConfigError


class StaticStudent(nn.Module):
    """Bag of distilled token vectors -> [masked mean, masked max] -> MLP -> linear heads.

    Mean pooling carries the gist of the prompt (tier, task); max pooling lets one telling token
    (a name, a key prefix, an ``@``) fire a detector without being averaged away in a long prompt,
    which the sensitivity head needs.
    """

    def __init__(self, embeddings: np.ndarray, schema: LabelSchema, hidden: int = 256, dropout: float = 0.1,
                 context_channels: int = 0, context_kernel: int = 3, context_dilation: int = 1) -> None:
        super().__init__()
        if embeddings.ndim != 2:
            raise ConfigError(f"embeddings must be a [vocab, dim] matrix, got shape {embeddings.shape}")
        if hidden < 0:
            raise ConfigError(f"hidden must be >= 0, got {hidden}")
        if context_channels < 0:
            raise ConfigError(f"context_channels must be >= 0 (0: no context), got {context_channels}")
        if context_kernel < 1 or context_kernel % 2 == 0:
            raise ConfigError(f"context_kernel must be an odd number >= 1 (a centred window), got {context_kernel}")
        if context_dilation < 1:
            raise ConfigError(f"context_dilation must be >= 1, got {context_dilation}")
        self.schema = schema
        self.head_names = schema.head_names
        self.embedding = nn.Embedding.from_pretrained(torch.as_tensor(embeddings, dtype=torch.float32), freeze=False)
        dim = embeddings.shape[1]
        self.hidden = hidden
        self.context_channels = context_channels
        self.context_kernel = context_kernel
        self.context_dilation = context_dilation
        # tap i of the window reads the token at offset (i - (k - 1) / 2) * dilation
        self.context_offsets = [(i - (context_kernel - 1) // 2) * context_dilation for i in range(context_kernel)]
        self.context = (nn.Conv1d(dim, context_channels, context_kernel, dilation=context_dilation,
                                  padding=(context_kernel - 1) // 2 * context_dilation)
                        if context_channels else None)
        feat_dim = 2 * dim + 2 * context_channels
        self.trunk = nn.Sequential(nn.Linear(feat_dim, hidden), nn.GELU(), nn.Dropout(dropout)) if hidden else nn.Identity()
        out_dim = hidden or feat_dim
        self.heads = nn.ModuleDict({h.name: nn.Linear(out_dim, h.num_classes) for h in schema.heads})

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        tok = self.embedding(input_ids)
        mean = (tok * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        # padding pushed far down so it never wins the max; an all-padding row yields -1e4 (finite)
        peak = (tok + (mask - 1.0) * 1e4).max(dim=1).values
        if self.context is None:
            return torch.cat([mean, peak], dim=1)
        # padding is zeroed before the convolution, exactly as the folded ONNX graph does; ReLU,
        # not GELU, because it runs on every token (an Erf per token and channel is not free)
        ctx = torch.relu(self.context((tok * mask).transpose(1, 2)).transpose(1, 2))
        cmean = (ctx * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        cpeak = (ctx + (mask - 1.0) * 1e4).max(dim=1).values
        return torch.cat([mean, peak, cmean, cpeak], dim=1)

    def context_table(self) -> np.ndarray:
        """The convolution folded into the token table: ``[vocab, k * channels]``, tap-major."""
        w = self.context.weight.detach().to(torch.float64)  # [C, D, k]
        e = self.embedding.weight.detach().to(torch.float64)  # [V, D]
        return torch.cat([e @ w[:, :, i].T for i in range(self.context_kernel)], dim=1).numpy().astype(np.float32)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.trunk(self.pooled(input_ids, attention_mask))
        return tuple(self.heads[n](z) for n in self.head_names)

    def to_onnx(self, opset: int = 20):
        """Build the ONNX graph by hand: exact, tiny, and free of exporter quirks.

        At a prompt of ~100 tokens the graph's cost is mostly ONNX Runtime's per-node overhead, so
        it is written with few nodes: GELU is opset 20's ``Gelu`` (exact, as torch's), not five
        Erf-pattern nodes.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        def t(name: str, arr: torch.Tensor) -> onnx.TensorProto:
            return numpy_helper.from_array(arr.detach().cpu().numpy().astype(np.float32), name)

        inits = [t("E", self.embedding.weight)]
        # Pooling is written for ONNX Runtime's fast kernels: the masked mean is a batched MatMul
        # of the normalised mask with the token vectors, and the max reduces the last axis after a
        # transpose. ReduceSum/ReduceMax over the middle (token) axis cost 3-4x more here, and at
        # batch 1 they were a third of the student's whole run.
        nodes = [
            helper.make_node("Gather", ["E", "input_ids"], ["tok"], axis=0),  # [b, L, D]
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["countc"]),
            helper.make_node("Div", ["maskf", "countc"], ["w"]),
            helper.make_node("Unsqueeze", ["w", "axis1"], ["w3"]),  # [b, 1, L]: mean weights
            helper.make_node("Sub", ["maskf", "one"], ["maskm1"]),
            helper.make_node("Mul", ["maskm1", "big"], ["pen"]),
            helper.make_node("Unsqueeze", ["pen", "axis2"], ["penalty"]),  # [b, L, 1]: padding never wins the max
        ]
        nodes += _pool_nodes("tok", "mean", "peak")
        inits += [
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([1e4], dtype=np.float32), "big"),
        ]
        pooled = ["mean", "peak"]
        if self.context is not None:
            nodes_ctx, inits_ctx = self._context_nodes(t)
            nodes += nodes_ctx
            inits += inits_ctx
            pooled += ["cmean", "cpeak"]
        nodes += [helper.make_node("Concat", pooled, ["pooled3"], axis=2),  # [b, 1, F]
                  helper.make_node("Squeeze", ["pooled3", "axis1"], ["pooled"])]
        feat = "pooled"
        if self.hidden:
            lin = self.trunk[0]
            inits += [t("W1", lin.weight.T.contiguous()), t("b1", lin.bias)]
            nodes += [
                helper.make_node("MatMul", ["pooled", "W1"], ["h0"]),
                helper.make_node("Add", ["h0", "b1"], ["h1"]),
                helper.make_node("Gelu", ["h1"], ["h"], approximate="none"),
            ]
            feat = "h"
        # one MatMul + Add per head, on purpose: ``tierwise adapt`` finds the trunk's output as the
        # last tensor every head's logits depend on (a fused product of all heads would be it)
        outputs = []
        for name in self.head_names:
            head = self.heads[name]
            inits += [t(f"W_{name}", head.weight.T.contiguous()), t(f"b_{name}", head.bias)]
            nodes += [
                helper.make_node("MatMul", [feat, f"W_{name}"], [f"z_{name}"]),
                helper.make_node("Add", [f"z_{name}", f"b_{name}"], [f"logits_{name}"]),
            ]
            outputs.append(helper.make_tensor_value_info(f"logits_{name}", TensorProto.FLOAT, ["batch", head.out_features]))
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ]
        graph = helper.make_graph(nodes, "tierwise_student", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tierwise")
        onnx.checker.check_model(model)
        return model

    def _context_nodes(self, t) -> tuple[list, list]:
        """Nodes of the folded convolution. Padding and the sequence ends must add nothing: ids
        of padded positions become ``vocab`` (an extra all-zero row of every tap table), the id
        sequence is padded with that id by the widest offset, and each tap gathers its own
        table at its shifted ids. Only integer [batch, seq] tensors are shifted; the float work
        is k gathers of ``channels`` floats per token, their sum, the bias and a ReLU."""
        from onnx import TensorProto, helper, numpy_helper

        c = self.context_channels
        vocab = self.embedding.num_embeddings
        reach = max(abs(o) for o in self.context_offsets)
        table = self.context_table()
        zero = np.zeros((1, c), dtype=np.float32)
        inits = [t("bc", self.context.bias),
                 numpy_helper.from_array(np.array([vocab], dtype=np.int64), "ctx_void"),
                 numpy_helper.from_array(np.array([0, reach, 0, reach], dtype=np.int64), "ctx_pads")]
        if reach:
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "ctx_axes"))
        nodes = [
            helper.make_node("Cast", ["attention_mask"], ["maskb"], to=TensorProto.BOOL),
            helper.make_node("Where", ["maskb", "input_ids", "ctx_void"], ["ctx_ids"]),
            helper.make_node("Pad", ["ctx_ids", "ctx_pads", "ctx_void"], ["ctx_idsp"], mode="constant"),
        ]
        taps = []
        for i, off in enumerate(self.context_offsets):
            inits.append(numpy_helper.from_array(
                np.concatenate([table[:, i * c:(i + 1) * c], zero]).astype(np.float32), f"T{i}"))
            if off == 0:
                src = "ctx_ids"
            else:
                # output position p reads padded position p + reach + off; as long as the input
                start, end = reach + off, off - reach  # end relative to the padded length (<= 0)
                end_v = end if end < 0 else np.iinfo(np.int64).max
                inits += [numpy_helper.from_array(np.array([start], dtype=np.int64), f"ctx_start{i}"),
                          numpy_helper.from_array(np.array([end_v], dtype=np.int64), f"ctx_end{i}")]
                nodes.append(helper.make_node("Slice", ["ctx_idsp", f"ctx_start{i}", f"ctx_end{i}", "ctx_axes"],
                                              [f"ctx_ids{i}"]))
                src = f"ctx_ids{i}"
            nodes.append(helper.make_node("Gather", [f"T{i}", src], [f"tap{i}"], axis=0))
            taps.append(f"tap{i}")
        nodes += [
            helper.make_node("Sum", taps, ["csum"]) if len(taps) > 1 else helper.make_node("Identity", taps, ["csum"]),
            helper.make_node("Add", ["csum", "bc"], ["c1"]),
            helper.make_node("Relu", ["c1"], ["ctx"]),
            *_pool_nodes("ctx", "cmean", "cpeak"),
        ]
        return nodes, inits


def _pool_nodes(x: str, mean: str, peak: str) -> list:
    """Masked mean and max of ``x`` [b, L, C] over tokens, each as [b, 1, C] (see ``to_onnx``)."""
    from onnx import helper

    return [
        helper.make_node("MatMul", ["w3", x], [mean]),
        helper.make_node("Add", [x, "penalty"], [f"{x}_pen"]),
        helper.make_node("Transpose", [f"{x}_pen"], [f"{x}_penT"], perm=[0, 2, 1]),  # [b, C, L]
        helper.make_node("ReduceMax", [f"{x}_penT", "axis2"], [f"{peak}_flat"], keepdims=0),
        helper.make_node("Unsqueeze", [f"{peak}_flat", "axis1"], [peak]),
    ]


@torch.no_grad()
def token_table_from_teacher(teacher, vocab_size: int, special_ids: list[int], dim: int | None,
                             batch_size: int = 512, progress: bool = True, seed: int = 0) -> np.ndarray:
    """Embed every vocabulary token on its own with the teacher encoder, then PCA to ``dim``.

    Each token is run as ``[CLS] tok [SEP]`` and mean-pooled like a sentence (model2vec's recipe),
    so its vector lives in the space the fine-tuned heads read. PCA (via SVD on a seeded sample)
    shrinks the table and speeds the student; ``dim=None`` keeps the full width.
    """
    from tqdm.auto import tqdm

    cls_id, sep_id = special_ids
    teacher.eval()
    vectors = []
    for start in tqdm(range(0, vocab_size, batch_size), desc="token table", disable=not progress):
        ids = torch.arange(start, min(start + batch_size, vocab_size))
        batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
        vectors.append(teacher.embed(batch, torch.ones_like(batch)).numpy())
    table = np.concatenate(vectors).astype(np.float32)
    if dim is not None and dim < table.shape[1]:
        rng = np.random.default_rng(seed)
        sample = table[rng.choice(len(table), size=min(len(table), 20000), replace=False)]
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        table = (table - mean) @ vt[:dim].T
    return table.astype(np.float32)
