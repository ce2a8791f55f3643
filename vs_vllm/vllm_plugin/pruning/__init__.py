"""The generic pruning layer: everything about serving a pruned multimodal model in vLLM that is not specific to one
architecture. An architecture is an adapter (``vs_vllm.vllm_plugin.adapters``) that mixes these in front of vLLM's
classes and says only what differs (``adapter.py``).

Request flow, module by module:

- ``processor.py``   API server: options -> K_i = keep_count(N_i, r) placeholders and per-item CPU fields
- ``fields.py``      the per-item field names and the name-derived method ids
- ``scorer_probe.py`` whether the served checkpoint (a local directory or a cached hub id) carries a scorer
- ``model.py``       worker: vision tower (micro-batched, ``encoder_budget.py``) -> ``selection.py`` -> rows with
                     position channels (``channels.py``); the position hook (``hook.py``); start-up guards
                     (``guards.py``)
"""
