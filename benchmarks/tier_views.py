"""Tier AUROC of a trained model (fp32, torch) read two ways on the same rows: the first window of
the text (how the trainer reads it) and the serving runtime's ``head_tail`` cut (the first
``head_tokens`` and the last tokens of a prompt longer than one window).

It separates what the whole-request view costs from what the model lost elsewhere. It reads the
built data set's tier-labelled rows of one split; it does not run the ONNX bundle (see
``benchmarks/sensitivity_eval.py`` for that). Usage::

    python -m benchmarks.tier_views --model models/teacher --split test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    from classifier.training.model import MultiHeadEncoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model directory written by tierwise train")
    ap.add_argument("--data", type=Path, default=Path("data/build/dataset.parquet"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--head-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = MultiHeadEncoder.load(args.model).eval()
    info = json.loads((args.model / "model_info.json").read_text())
    window = int(info.get("max_length", 128)) - 2
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    frame = pd.read_parquet(args.data, columns=["text", "split", "tier"])
    frame = frame[(frame["split"] == args.split) & frame["tier"].notna()]
    cls, sep, pad = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[PAD]") or 0
    ids = [e.ids for e in tok.encode_batch(frame["text"].tolist(), add_special_tokens=False)]
    y = (frame["tier"].to_numpy() == "frontier").astype(int)
    long = np.array([len(x) > window for x in ids])
    tail = window - args.head_tokens
    views = {"head": [x[:window] for x in ids],
             "head_tail": [x if len(x) <= window else x[:args.head_tokens] + x[-tail:] for x in ids]}
    frontier = list(model.schema.head("tier").classes).index("frontier")
    result: dict = {"model": str(args.model), "split": args.split, "rows": len(y), "long_share": float(long.mean())}
    for name, rows in views.items():
        probs = []
        with torch.no_grad():
            for s in tqdm(range(0, len(rows), 64), desc=name, leave=False):
                batch = [[cls, *r, sep] for r in rows[s:s + 64]]
                width = max(map(len, batch))
                t = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
                probs.append(torch.softmax(model.logits_dict(t, mask)["tier"], -1)[:, frontier].numpy())
        p = np.concatenate(probs)
        result[name] = {"auroc": round(float(roc_auc_score(y, p)), 4),
                        "auroc_long": round(float(roc_auc_score(y[long], p[long])), 4) if len(set(y[long])) > 1 else None}
        sys.stdout.write(f"{name}: tier AUROC {result[name]['auroc']} (prompts longer than one window: "
                         f"{result[name]['auroc_long']})\n")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
