"""Benchmarks of vs-vllm: the prefill (TTFT / throughput) sweep against stock vLLM, FLOP counting, ceilings.

``vs-vllm bench prefill`` (or ``benchmarks/prefill/bench_prefill.py``) runs the sweep; see
:mod:`vs_vllm.benchmarking.prefill`.
"""
