"""A small byte-level BPE tokenizer with the Qwen special tokens, trained in-process (no hub, no files read).

Qwen2/2.5/3-VL checkpoints share this tokenizer family; LLaVA-style checkpoints can reuse the same builder with their
own special-token list.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

# Qwen's special tokens, in Qwen's order: they take consecutive ids right after the BPE vocabulary, so their relative
# layout matches the real tokenizer's (only the offset differs).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation runs, newlines, spaces).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2-VL chat template: string content or lists of image / image_url / video / text parts, a default system
# prompt, one <|vision_start|><|image_pad|><|vision_end|> per image.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an is are was what which where who how many much colour color shape image picture photo describe "
    "red green blue yellow orange purple pink brown black white grey gray cyan magenta "
    "circle square triangle star cross ring shape object background texture left right top bottom middle center "
    "corner small large big tiny one two three four five six seven eight nine ten yes no answer question "
    "system user assistant you helpful please word in on of and or with this that there here it its "
    "text document chart table number value total price date name title page line row column"
).split()


def _corpus(lines: int = 3000) -> Iterator[str]:
    """Deterministic training text: chat-like sentences, digits and punctuation, so common words become single tokens."""
    cycle = itertools.cycle(_WORDS)
    for i in range(lines):
        n = 4 + (i * 7) % 9
        words = [next(cycle) for _ in range(n)]
        if i % 3 == 0:
            words[0] = words[0].capitalize()
        sentence = " ".join(words)
        punct = "?.!,:"[i % 5]
        yield f"{sentence}{punct} {i % 97} {(i * 13) % 1000}\n"


def build_bpe_tokenizer(
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    *,
    bpe_vocab_size: int = 752,
    chat_template: str = QWEN2_VL_CHAT_TEMPLATE,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
):
    """Train a byte-level BPE and wrap it as a ``PreTrainedTokenizerFast`` with ``special_tokens`` appended in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Special tokens after the BPE vocabulary, in the given order (add_special_tokens assigns consecutive ids).
    tok.add_special_tokens(list(special_tokens))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = chat_template
    return fast
