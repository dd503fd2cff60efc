"""snakepit-dspy through real pools: real DSPy in the workers, DSPy's offline DummyLM."""

import os
import sys
from pathlib import Path

import attrs
import dspy

import snakepit
from snakepit.plugins import installed_plugins

CONFIG = snakepit.PoolConfig(size=2, handler="snakepit.bridge.enhanced:EnhancedHandler",
                             allowed_targets=("dspy", "snakepit_dspy"))


def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-dspy" and p.error is None
               for p in installed_plugins())


async def test_configure_predict_and_chain_of_thought_with_refs_between_calls() -> None:
    async with snakepit.open_pool(CONFIG) as pool, pool.session(mode="strict") as s:
        lm = await s.call("dspy.utils.DummyLM", [
            {"answer": "42"},
            {"reasoning": "six times seven", "answer": "42"},
        ])
        assert isinstance(lm, snakepit.Ref)  # an LM cannot travel: it stays in the worker
        await s.call("dspy.configure", lm=lm)
        predict = await s.call("dspy.Predict", "question -> answer")
        assert isinstance(predict, snakepit.Ref) and predict.type.endswith("Predict")

        answer = await predict.call(question="What is six times seven?")
        assert isinstance(answer, dspy.Prediction)  # decoded on the host
        assert answer.answer == "42"

        think = await s.call("dspy.ChainOfThought", "question -> answer")
        reasoned = await think.call(question="Why?")
        assert (reasoned.reasoning, reasoned.answer) == ("six times seven", "42")

        history = await s.call("snakepit_dspy.lm_history", lm)
        assert len(history) == 2 and all("messages" in entry for entry in history)

        signature = await predict.getattr("signature")
        assert signature.signature == "question -> answer"  # a Signature class, rebuilt


async def test_examples_travel_with_their_inputs() -> None:
    example = dspy.Example(question="q?", answer="a!").with_inputs("question")
    async with snakepit.open_pool(CONFIG) as pool:
        back = await pool.call("dspy.Example", example)  # Example(example) copies it
    assert isinstance(back, dspy.Example)
    assert back.toDict() == {"question": "q?", "answer": "a!"}
    assert set(back.inputs().keys()) == {"question"}


class Quiz(dspy.Signature):
    """Answer arithmetic questions with a number."""

    question: str = dspy.InputField(desc="a question about arithmetic")
    hints: list[str] = dspy.InputField(desc="facts that may help")
    answer: int = dspy.OutputField(desc="the number only")


def fields_of(signature: type) -> dict[str, tuple[object, str]]:
    every = {**signature.input_fields, **signature.output_fields}  # type: ignore[attr-defined]
    return {name: (field.annotation, field.json_schema_extra["desc"])
            for name, field in every.items()}


async def test_signatures_keep_field_descriptions_and_types() -> None:
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        predict = await pool.call("dspy.Predict", Quiz)  # the class goes to the worker...
        back = await predict.getattr("signature")  # ...and comes back from it
    assert fields_of(back) == fields_of(Quiz) == {
        "question": (str, "a question about arithmetic"),
        "hints": (list[str], "facts that may help"),
        "answer": (int, "the number only")}
    assert back.instructions == "Answer arithmetic questions with a number."
    assert list(back.input_fields) == ["question", "hints"]


# -- DSPy configured on every worker; values and module state both ways -----------------------
HERE = Path(__file__).parent


async def test_preload_configures_dspy_on_every_worker() -> None:
    config = attrs.evolve(CONFIG, preload=("dspy_setup",),
                          env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    async with snakepit.open_pool(config) as pool:
        predictors = [await pool.call("dspy.Predict", "question -> answer") for _ in range(6)]
        pids = {predict.pid for predict in predictors}
        assert len(pids) == 2  # calls outside a session spread over the workers...
        for predict in predictors:  # ...and each worker answers with its own LM
            answer = await predict.call(question="Who configured you?")
            assert answer.answer == f"configured in {predict.pid}"


async def test_predictions_round_trip_both_ways() -> None:
    prediction = dspy.Prediction(answer="42", reasoning="six times seven", score=0.5)
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        back = await pool.call("dspy.Prediction.copy", prediction)  # host -> worker -> host
    assert type(back) is dspy.Prediction
    assert back.toDict() == {"answer": "42", "reasoning": "six times seven", "score": 0.5}


async def test_module_state_round_trips_into_a_fresh_module() -> None:
    async with snakepit.open_pool(CONFIG) as pool, pool.session(mode="strict") as s:
        first = await s.call("dspy.ChainOfThought", Quiz)
        state = await first.method("dump_state")  # plain data on the host
        state["predict"]["demos"] = [{"question": "1+1?", "answer": "2"}]  # edited here
        await first.method("load_state", state)  # ... and loaded back
        state = await first.method("dump_state")
        assert state["predict"]["demos"] == [{"question": "1+1?", "answer": "2"}]
        assert state["predict"]["signature"]["instructions"] == Quiz.instructions
        async with pool.session(mode="strict") as other:  # a fresh module elsewhere
            second = await other.call("dspy.ChainOfThought", Quiz)
            await second.method("load_state", state)
            assert await second.method("dump_state") == state


async def test_a_react_agent_in_the_worker_calls_host_tools() -> None:
    """snakepit_dspy.host_tool: a dspy.Tool in the worker that runs a host function."""
    orders = {42: "shipped"}
    asked: list[object] = []

    async def lookup_order(args: dict[str, int]) -> str:
        """Look up an order's status by its id."""
        asked.append(args)
        return f"order {args['order_id']} is {orders[args['order_id']]}"

    async with snakepit.open_pool(CONFIG, size=1) as pool, pool.session(mode="strict") as s:
        pool.register_tool("lookup_order", lookup_order)
        lm = await s.call("dspy.utils.DummyLM", [
            {"next_thought": "look it up", "next_tool_name": "lookup_order",
             "next_tool_args": {"order_id": 42}},
            {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "the host said so", "answer": "shipped"},
        ])
        await s.call("dspy.configure", lm=lm)
        tool = await s.call("snakepit_dspy.host_tool", "lookup_order",
                            args={"order_id": {"type": "integer"}})
        assert await tool.getattr("desc") == "Look up an order's status by its id."
        agent = await s.call("dspy.ReAct", "question -> answer", tools=[tool], max_iters=3)
        prediction = await agent.call(question="Where is order 42?")
    assert prediction.answer == "shipped"
    assert prediction.trajectory["observation_0"] == "order 42 is shipped"
    assert asked == [{"order_id": 42}]
