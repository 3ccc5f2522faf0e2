"""Runtimes: one loaded base model that generates token streams, with LoRA adapters beside it.

A runtime knows nothing of HTTP or of the registry. It takes one already tokenised prompt per
sequence (a "row") plus the adapter to use, and returns a `RowStream` of text deltas ending in a
`Finished` event (`base.py`: the interface every runtime meets). Two implementations:

- `TransformersRuntime` (`transformers_runtime.py`): a micro-batcher (`batching.py`) gathers
  concurrent rows into one batched `generate`; every row keeps its own sampling parameters.
- `VLLMRuntime` (`vllm_runtime.py`): vLLM's async engine, continuous batching, multi-LoRA.
"""
