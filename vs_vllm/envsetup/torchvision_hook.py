"""Import hook that lets PyPI's CUDA-only torchvision import beside a CPU build of torch.

Installed by ``vs_vllm.envsetup.setup_cpu_env`` into the CPU venv's site-packages as ``_vs_vllm_cpu_fixups.py`` with a
one-line ``.pth`` file, so it runs in *every* Python process of that venv (vLLM's API server, EngineCore and workers).

Why: torchvision's ``_C`` extension links CUDA libraries that the CPU torch lacks, so its ops never register; then two
unguarded ``register_fake("torchvision::nms")`` / ``("torchvision::qnms")`` decorators in
``torchvision/_meta_registrations.py`` raise "operator torchvision::nms does not exist" and the whole import dies.
Qwen2-VL's processors need ``torchvision.transforms.v2``, so torchvision cannot be skipped.

What: a meta-path finder that waits for ``torchvision._meta_registrations``; at that point torchvision's ``__init__`` has
imported torch and ``torchvision.extension``. If the compiled ops did not load, it defines the two missing schemas (the
same signatures torchvision 0.28 declares) in a FRAGMENT library kept alive for the process, then steps aside so the
normal import proceeds. It edits no third-party file and imports only ``sys`` until torchvision is being imported
(+0.3 ms per process). ``torchvision.ops.nms`` stays unusable; image models do not call it.
"""

import sys

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_TARGET = "torchvision._meta_registrations"
_LIBRARIES = []  # keeps the FRAGMENT library referenced: its definitions vanish when it is garbage-collected


def _define_missing_schemas():
    import torch
    from torchvision import extension

    if extension._has_ops():
        return []
    lib = None
    defined = []
    for name, schema in _MISSING_SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, name)
            continue  # already registered (by torchvision's own _C or an earlier hook)
        except (AttributeError, RuntimeError):
            pass
        if lib is None:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            _LIBRARIES.append(lib)
        lib.define(schema)
        defined.append(name)
    return defined


class _TorchvisionSchemaFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        try:
            sys.meta_path.remove(cls)
        except ValueError:
            pass
        _define_missing_schemas()
        return None  # let the regular finders import the module


def install():
    if _TorchvisionSchemaFinder not in sys.meta_path:
        sys.meta_path.insert(0, _TorchvisionSchemaFinder)


install()
