"""Serving: the torch-free runtime (numpy, onnxruntime, tokenizers), bundles, the policy engine,
the audit log and the HTTP app. Never imports torch or transformers."""
