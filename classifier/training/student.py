"""The fast student: static token embeddings, masked mean, a small MLP trunk and one head per schema head.

The student reads the same ``input_ids``/``attention_mask`` as the teacher, so it is served by the
same runtime from the same bundle format. Its token table is distilled from the fine-tuned
encoder (model2vec-style: every vocabulary token is embedded on its own by the teacher, then
reduced with PCA), and the whole student is then trained on labels and teacher soft targets
(see ``distillation``). This module holds the network and its ONNX graph; it does not train.
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

    def __init__(self, embeddings: np.ndarray, schema: LabelSchema, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        if embeddings.ndim != 2:
            raise ConfigError(f"embeddings must be a [vocab, dim] matrix, got shape {embeddings.shape}")
        if hidden < 0:
            raise ConfigError(f"hidden must be >= 0, got {hidden}")
        self.schema = schema
        self.head_names = schema.head_names
        self.embedding = nn.Embedding.from_pretrained(torch.as_tensor(embeddings, dtype=torch.float32), freeze=False)
        dim = embeddings.shape[1]
        self.hidden = hidden
        self.trunk = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Dropout(dropout)) if hidden else nn.Identity()
        out_dim = hidden or 2 * dim
        self.heads = nn.ModuleDict({h.name: nn.Linear(out_dim, h.num_classes) for h in schema.heads})

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        tok = self.embedding(input_ids)
        mean = (tok * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        # padding pushed far down so it never wins the max; an all-padding row yields -1e4 (finite)
        peak = (tok + (mask - 1.0) * 1e4).max(dim=1).values
        return torch.cat([mean, peak], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.trunk(self.pooled(input_ids, attention_mask))
        return tuple(self.heads[n](z) for n in self.head_names)

    def to_onnx(self, opset: int = 18):
        """Build the ONNX graph by hand: exact, tiny, and free of exporter quirks.

        GELU is written with Erf so any opset >= 13 runs it; GELU here matches torch's exact GELU.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        def t(name: str, arr: torch.Tensor) -> onnx.TensorProto:
            return numpy_helper.from_array(arr.detach().cpu().numpy().astype(np.float32), name)

        inits = [t("E", self.embedding.weight)]
        nodes = [
            helper.make_node("Gather", ["E", "input_ids"], ["tok"], axis=0),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["countc"]),
            helper.make_node("Div", ["summed", "countc"], ["mean"]),
            helper.make_node("Sub", ["mask3", "one"], ["maskm1"]),
            helper.make_node("Mul", ["maskm1", "big"], ["penalty"]),
            helper.make_node("Add", ["tok", "penalty"], ["tokpen"]),
            helper.make_node("ReduceMax", ["tokpen", "axis1"], ["peak"], keepdims=0),
            helper.make_node("Concat", ["mean", "peak"], ["pooled"], axis=1),
        ]
        inits += [
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([1e4], dtype=np.float32), "big"),
        ]
        feat = "pooled"
        if self.hidden:
            lin = self.trunk[0]
            inits += [t("W1", lin.weight.T.contiguous()), t("b1", lin.bias),
                      numpy_helper.from_array(np.array([np.sqrt(0.5)], dtype=np.float32), "rsqrt2"),
                      numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half")]
            nodes += [
                helper.make_node("MatMul", ["pooled", "W1"], ["h0"]),
                helper.make_node("Add", ["h0", "b1"], ["h1"]),
                helper.make_node("Mul", ["h1", "rsqrt2"], ["hs"]),
                helper.make_node("Erf", ["hs"], ["he"]),
                helper.make_node("Add", ["he", "one"], ["he1"]),
                helper.make_node("Mul", ["h1", "he1"], ["hg"]),
                helper.make_node("Mul", ["hg", "half"], ["h"]),
            ]
            feat = "h"
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
