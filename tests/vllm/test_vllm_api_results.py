"""The keys the plugin reads from vLLM's multimodal processing, on a real call: every architecture's processor (ours,
with the plugin registered) applied to an image and a video; each ``PRIVATE_API`` / adapter entry with probe
"processor" is looked up in the result. A signature cannot show a renamed result key or a processor field that a
transformers or vLLM upgrade dropped; this does, by name, instead of a wrong count or position at serve time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vs_vllm.testing.server import cpu_env
from vs_vllm.testing.tiny_models import list_archs
from vs_vllm.vllm_plugin.patches import installed_vllm_version
from vs_vllm.vllm_plugin.patches.surface import probed_touches

pytestmark = pytest.mark.slow  # one vLLM import and five processors in a subprocess

SCRIPT = textwrap.dedent(
    """
    import json, sys

    from vs_vllm.vllm_plugin import register

    register()
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    from vs_vllm.testing.images import noise_image, noise_video
    from vs_vllm.vllm_plugin.patches import installed_vllm_version
    from vs_vllm.vllm_plugin.patches.surface import check_member, probed_touches

    report = {}
    for model_dir in sys.argv[1:]:
        config = ModelConfig(model=model_dir, limit_mm_per_prompt={"image": 1, "video": 1}, dtype="float32")
        processor = MULTIMODAL_REGISTRY.create_processor(config)
        prompt = processor.info.get_tokenizer().encode(
            "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Describe both.")
        video = noise_video(64, 64, 4, seed=1)
        items = processor.info.parse_mm_data({"image": [noise_image(96, 64)],
                                              "video": [(video.frames(), video.metadata())]})
        options = {"retention_ratio": 0.5, "selection_method": "uniform"}
        result = processor.apply(ProcessorInputs(prompt, items, hf_processor_mm_kwargs=options), TimingContext())
        arch = config.architectures[0]
        touches = probed_touches("processor", installed_vllm_version(), None, [arch])
        report[arch] = {
            "processor": type(processor).__name__,
            "checked": [f"{t.symbol}[{t.member}]" for t in touches],
            "problems": [p for p in (check_member(t, result) for t in touches) if p],
        }
    print("RESULT " + json.dumps(report))
    """
)


def test_processor_results_have_every_key_the_plugin_reads(tiny_arch_dir, tmp_path) -> None:
    archs = [a for a in list_archs() if a != "qwen2"]  # qwen2 is the text-only model
    dirs = [str(tiny_arch_dir(a)) for a in archs]
    script = tmp_path / "probe_processor.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), *dirs], capture_output=True, text=True,
                          env=cpu_env(VS_VLLM_ENABLE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])

    assert len(report) == len(archs), report.keys()
    for arch, found in report.items():
        assert found["processor"].startswith("Vs"), found  # the plugin's processor ran, so its reads ran too
        expected = probed_touches("processor", installed_vllm_version(), None, [arch])
        assert found["checked"] == [f"{t.symbol}[{t.member}]" for t in expected] and expected, arch
        assert found["problems"] == [], arch
    # The architecture-specific keys were among them: Qwen3-VL's timestamps, Qwen2.5-VL's seconds per patch.
    assert any(c.endswith("timestamps]") for c in report["Qwen3VLForConditionalGeneration"]["checked"])
    assert any(c.endswith("second_per_grid_ts]") for c in report["Qwen2_5_VLForConditionalGeneration"]["checked"])
