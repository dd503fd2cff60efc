"""snakepit-transformers through real pools: a tiny model built locally, run in a worker."""

import os
import sys
from pathlib import Path

import attrs
import numpy
import pytest
import torch
import transformers

import snakepit
from snakepit.plugins import installed_plugins
from snakepit_transformers import ArraySerializer, TensorSerializer

CONFIG = snakepit.PoolConfig(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler",
                             allowed_targets=("transformers", "torch"), startup_timeout=60)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "snake", "pit"]


def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-transformers" and p.error is None
               for p in installed_plugins())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16,
                                   torch.int64, torch.bool])
def test_tensors_round_trip_as_bytes(dtype: torch.dtype) -> None:
    tensor = (torch.arange(12).reshape(3, 4) % 3).to(dtype)
    encoded = TensorSerializer().encode(tensor)
    assert encoded["shape"] == [3, 4]
    assert memoryview(encoded["bytes"]).nbytes == tensor.numel() * tensor.element_size()
    assert torch.equal(TensorSerializer().decode(encoded), tensor)


def test_arrays_and_scalars_round_trip() -> None:
    array = numpy.linspace(0, 1, 7, dtype="float32").reshape(7, 1)
    assert numpy.array_equal(ArraySerializer().decode(ArraySerializer().encode(array)), array)
    score = numpy.float32(0.25)
    back = ArraySerializer().decode(ArraySerializer().encode(score))
    assert back == score and back.dtype == numpy.float32


async def test_a_tiny_bert_runs_in_a_worker(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    async with snakepit.open_pool(CONFIG) as pool, pool.session(mode="strict") as s:
        tokenizer = await s.call("transformers.BertTokenizerFast", vocab=str(vocab))
        batch = await tokenizer.call("hello world snake", return_tensors="pt")
        assert isinstance(batch, transformers.BatchEncoding)
        assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 3]]

        config = await s.call("transformers.BertConfig", vocab_size=len(VOCAB),
                              hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32)
        await s.call("torch.manual_seed", 0)
        model = await s.call("transformers.BertModel", config)
        assert isinstance(model, snakepit.Ref)  # the model stays in the worker
        await model.method("eval")
        output = await model.call(**batch)  # host tensors go back in as arguments
        assert type(output).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
        assert output.last_hidden_state.shape == (1, 5, 16)
        assert output.pooler_output.dtype == torch.float32

        extract = await s.call("transformers.pipeline", "feature-extraction", model=model,
                               tokenizer=tokenizer)
        features = await extract.call("hello pit")
        assert numpy.asarray(features).shape == (1, 4, 16)


async def test_a_causal_lm_output_travels_and_only_its_cache_stays_a_ref() -> None:
    """GPT-2's forward (``use_cache=True`` by default) and ``generate`` return outputs
    holding a ``DynamicCache``: the plain fields travel, the cache stays in the worker."""
    async with snakepit.open_pool(CONFIG) as pool, pool.session(mode="strict") as s:
        config = await s.call("transformers.GPT2Config", vocab_size=32, n_positions=16,
                              n_embd=16, n_layer=1, n_head=2)
        await s.call("torch.manual_seed", 0)
        model = await s.call("transformers.GPT2LMHeadModel", config)
        await model.method("eval")
        prompt = torch.tensor([[1, 2, 3]])
        output = await model.call(input_ids=prompt, labels=prompt)
        assert type(output).__name__ == "CausalLMOutputWithCrossAttentions"
        assert output.logits.shape == (1, 3, 32) and output.loss.dim() == 0
        cache = output.past_key_values
        assert isinstance(cache, snakepit.Ref) and cache.type.endswith("DynamicCache")
        # the cache goes back in by reference: the next step continues from it
        step = await model.call(input_ids=torch.tensor([[4]]), past_key_values=cache)
        assert step.logits.shape == (1, 1, 32)
        assert await step.past_key_values.method("get_seq_length") == 4
        generated = await model.method("generate", prompt, max_new_tokens=2, do_sample=False,
                                       return_dict_in_generate=True, pad_token_id=0)
        assert type(generated).__name__.startswith("Generate")
        assert generated.sequences.shape == (1, 5)
        assert generated.sequences[0, :3].tolist() == [1, 2, 3]
        assert isinstance(generated.past_key_values, snakepit.Ref)


async def test_an_output_holding_a_cache_ref_goes_back_to_the_worker_whole() -> None:
    """Host -> worker: the output's Ref field is sent as the ref, and the worker's
    serializer gets the cache object itself back in the output it rebuilds."""
    here = str(Path(__file__).parent)
    config = attrs.evolve(CONFIG, allowed_targets=(*CONFIG.allowed_targets, "output_probe"),
                          env={"PYTHONPATH": os.pathsep.join([here, *sys.path])})
    async with snakepit.open_pool(config) as pool, pool.session(mode="strict") as s:
        gpt2 = await s.call("transformers.GPT2Config", vocab_size=32, n_positions=16,
                            n_embd=16, n_layer=1, n_head=2)
        model = await s.call("transformers.GPT2LMHeadModel", gpt2)
        output = await model.call(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
        assert isinstance(output.past_key_values, snakepit.Ref)
        assert await s.call("output_probe.cache_length", output) == 5
