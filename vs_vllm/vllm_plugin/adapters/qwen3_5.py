"""Qwen3.5 (dense): the Qwen3-VL adapter with vLLM's Qwen3.5 classes.

What Qwen3.5 shares with Qwen3-VL, and why the Qwen3-VL adapter applies unchanged:

- the vision tower is vLLM's ``Qwen3_VisionTransformer`` (16-px patches, 2x2 merge, learned position table) and the
  processor is ``Qwen3VLMultiModalProcessor``; Qwen3.5 has no DeepStack (its vision config has no
  ``deepstack_visual_indexes``), so a vision-output row is just the ``out_hidden_size`` main features and
  ``scored_width`` covers all of it;
- media spans and M-RoPE positions are Qwen3-VL's: images are one (1, h, w) run, video frames are split by timestamp
  text (transformers' ``Qwen3_5Model.get_rope_index`` splits video grids per frame exactly like Qwen3-VL's); the LLM
  rotates only ``partial_rotary_factor`` of each full-attention head with interleaved sections, which changes how
  positions are consumed, not the positions;
- videos are pruned as on Qwen3-VL (per-frame layout, kept tokens in the first frame's run; inherited); the video
  e2e tests of Qwen3.5 are in tests/vllm/test_qwen3_5_e2e.py.

What differs is the language model: a hybrid of gated-delta-net layers (recurrent state, vLLM's "mamba" cache) and
gated full attention (``IsHybrid``). The pruning layer needs nothing extra for it: the processor already writes K_i
placeholders, so the engine schedules, caches (mamba state included) and positions a sequence that is pruned from
the start, and the model's hybrid class methods (``get_mamba_state_shape_from_config`` etc.) are inherited from
vLLM's class untouched. vLLM 0.32's CPU GDN kernel runs in bfloat16 only (``cpu_gdn_attention_core`` asserts it), so
on CPU this model must be served with ``--dtype bfloat16``.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.qwen3_5 import Qwen3_5ProcessingInfo

try:
    # vLLM 0.34 serves Qwen3.5 from a platform-selected module: NVIDIA's own modelling on CUDA
    # (vllm.models.qwen3_5.nvidia.model), the previous class below everywhere else. Subclass what vLLM would serve.
    from vllm.models.qwen3_5 import Qwen3_5ForConditionalGeneration
except ImportError:  # vLLM 0.32 / 0.33
    from vllm.model_executor.models.qwen3_5 import Qwen3_5ForConditionalGeneration
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder, Qwen3VLMultiModalProcessor
from vllm.multimodal import MULTIMODAL_REGISTRY

from vs_vllm.vllm_plugin.adapters.qwen3_vl import Qwen3VLAdapter
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
from vs_vllm.vllm_plugin.pruning.processor import PruningProcessingInfoMixin, PruningProcessorMixin


class Qwen3_5Adapter(Qwen3VLAdapter):
    architecture = "Qwen3_5ForConditionalGeneration"
    vllm_model = "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration"
    #: vLLM 0.34's CUDA class; the protected methods the pruning layer calls must exist there too.
    vllm_model_cuda_034 = "vllm.models.qwen3_5.nvidia.model:Qwen3_5ForConditionalGeneration"

    @property
    def private_api(self) -> tuple[Any, ...]:
        from dataclasses import replace

        touches = super().private_api
        cuda = tuple(replace(t, symbol=t.symbol.replace(self.vllm_model, self.vllm_model_cuda_034), versions=("0.34",))
                     for t in touches if t.symbol.startswith(self.vllm_model + "."))
        return (*touches, *cuda)


ADAPTER = Qwen3_5Adapter()


class VsQwen3_5ProcessingInfo(PruningProcessingInfoMixin, Qwen3_5ProcessingInfo):
    vs_adapter = ADAPTER


class VsQwen3_5MultiModalProcessor(PruningProcessorMixin, Qwen3VLMultiModalProcessor):
    vs_adapter = ADAPTER


# vLLM registers Qwen3_5ForConditionalGeneration with Qwen3VLMultiModalProcessor, Qwen3_5ProcessingInfo (which only
# changes the HF config class it asks for) and Qwen3VLDummyInputsBuilder; ours mirror that.
@MULTIMODAL_REGISTRY.register_processor(
    VsQwen3_5MultiModalProcessor, info=VsQwen3_5ProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class VsQwen3_5ForConditionalGeneration(PruningModelMixin, Qwen3_5ForConditionalGeneration):
    vs_adapter = ADAPTER
