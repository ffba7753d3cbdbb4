"""Tests for lisa/engine.py and lisa/config.py: LisaConfig validation and serialisation, and the
Lisa engine in a plain loop."""

from __future__ import annotations

import copy
import functools
import itertools
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lisa import Lisa, LisaConfig
from lisa.layers import LayerMap
from lisa.samplers import make_sampler

VOCAB = 128


def make_batch(seed: int, batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()}


def run_steps(model, optimizer, lisa, seeds, *, record=None) -> list[float]:
    """The documented plain-loop pattern; returns the per-step losses."""
    losses = []
    for seed in seeds:
        if lisa is not None:
            lisa.begin_step()
        loss = model(**make_batch(seed)).loss
        loss.backward()
        optimizer.step()
        if record is not None:
            record(model, optimizer, lisa)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- LisaConfig --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gamma", -1),
        ("gamma", 1.5),
        ("interval", 0),
        ("interval", -3),
        ("seed", -1),
        ("state_policy", "forget"),
        ("sampler", "no-such-sampler"),
        ("sampler", 42),
        ("train_head", "yes"),
        ("blocks_path", ""),
    ],
)
def test_config_rejects_bad_field_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        LisaConfig(**{field: value})


def test_config_gamma_must_match_a_fixed_size_sampler():
    sampler = make_sampler("uniform", 4, gamma=3)
    with pytest.raises(ValueError, match="gamma=3"):
        LisaConfig(gamma=2, sampler=sampler)
    assert LisaConfig(gamma=3, sampler=sampler).sampler is sampler


def test_config_is_frozen():
    config = LisaConfig()
    with pytest.raises(AttributeError):
        config.gamma = 5


# --- construction errors (before any training step) --------------------------------------


def test_gamma_above_block_count_fails_at_construction(tiny_llama):
    model = tiny_llama(num_blocks=4)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="gamma=5 is larger than the model's 4 blocks"):
        Lisa(model, optimizer, LisaConfig(gamma=5))


def test_sampler_built_for_other_block_count_fails(tiny_llama):
    model = tiny_llama(num_blocks=4)
    optimizer = torch.optim.AdamW(model.parameters())
    config = LisaConfig(gamma=2, sampler=make_sampler("uniform", 6, gamma=2))
    with pytest.raises(ValueError, match="num_blocks=6 but the model has 4 blocks"):
        Lisa(model, optimizer, config)


def test_unresolvable_blocks_path_fails(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match=r"blocks_path='model\.nothing_here'"):
        Lisa(model, optimizer, LisaConfig(blocks_path="model.nothing_here"))


def test_freezing_before_the_optimizer_is_refused(tiny_llama):
    """Rule 1 (docs/design.md section 3): blocks frozen before the optimizer could never train."""
    model = tiny_llama()
    for p in model.model.layers[1:].parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="no parameter in the optimizer"):
        Lisa(model, optimizer, LisaConfig(gamma=1))


def test_trainable_parameter_outside_the_optimizer_is_refused(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(list(model.parameters())[:-1])
    with pytest.raises(ValueError, match="not in the optimizer"):
        Lisa(model, optimizer, LisaConfig(gamma=1))


def test_construction_freezes_nothing(tiny_llama):
    model = tiny_llama()
    Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=1))
    assert all(p.requires_grad for p in model.parameters())


# --- schedule ----------------------------------------------------------------------------


def test_switches_at_first_step_and_every_interval(tiny_llama):
    model = tiny_llama(num_blocks=6)
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=2, interval=3))
    for _ in range(10):
        active = lisa.begin_step()
        assert len(active) == 2
        assert active == lisa.active_blocks
    assert [step for step, _ in lisa.history] == [0, 3, 6, 9]


def test_begin_step_with_explicit_step_is_idempotent(tiny_llama):
    model = tiny_llama(num_blocks=6)
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=2, interval=3))
    first = lisa.begin_step(0)
    assert lisa.begin_step(0) == first
    assert len(lisa.history) == 1
    with pytest.raises(ValueError, match="step=-1"):
        lisa.begin_step(-1)


def test_same_seed_gives_the_same_schedule_on_every_engine(tiny_llama):
    """Every rank builds its own engine; the shared seed makes the draws agree."""
    schedules = []
    for _ in range(2):
        model = tiny_llama(num_blocks=6)
        lisa = Lisa(
            model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=2, interval=1, seed=7)
        )
        schedules.append([lisa.begin_step() for _ in range(20)])
    assert schedules[0] == schedules[1]
    assert len(set(schedules[0])) > 1


@functools.cache
def shared_llama():
    """One tiny model for property tests that never run a forward pass."""
    from lisa_apps.tiny import build_tiny_model

    return build_tiny_model("tiny-llama", num_blocks=5, hidden=32, vocab_size=VOCAB)


@given(
    interval=st.integers(min_value=1, max_value=6),
    gamma=st.integers(min_value=0, max_value=5),
    gaps=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=25),
)
def test_draws_happen_exactly_when_the_period_changes(interval, gamma, gaps):
    model = shared_llama()
    lisa = Lisa(model, torch.optim.SGD(model.parameters(), lr=0.1), LisaConfig(gamma, interval))
    steps = list(itertools.accumulate(gaps))  # non-decreasing steps, repeats and jumps included
    for step in steps:
        active = lisa.begin_step(step)
        assert len(active) == gamma and list(active) == sorted(set(active))
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        assert trained == {id(p) for p in lisa.trainable_parameters()}
    first_of_period = [
        s for i, s in enumerate(steps) if i == 0 or s // interval != steps[i - 1] // interval
    ]
    assert [step for step, _ in lisa.history] == first_of_period


# --- training behaviour ------------------------------------------------------------------


@pytest.mark.numerics
def test_all_blocks_kept_equals_plain_adamw_bit_for_bit(tiny_llama):
    reference = tiny_llama(num_blocks=4, seed=3)
    model = copy.deepcopy(reference)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=4, interval=2, state_policy="keep"))
    seeds = range(6)
    reference_losses = run_steps(reference, reference_optimizer, None, seeds)
    losses = run_steps(model, optimizer, lisa, seeds)
    assert losses == reference_losses
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("factory", ["tiny_llama", "tiny_gpt2"])
def test_frozen_parameters_do_not_change_and_active_ones_do(factory, request):
    model = request.getfixturevalue(factory)(num_blocks=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=2))
    layer_map = lisa.layer_map
    for seed in range(8):
        lisa.begin_step()
        before = snapshot(model)
        model(**make_batch(seed)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        trained = set(lisa.trainable_groups())
        assert {"embed", f"block.{lisa.active_blocks[0]}"} <= trained
        for group in layer_map.group_names:
            for name, p in layer_map.parameters(group):
                changed = not torch.equal(before[name], p)
                if group in trained:
                    assert changed, f"{name} ({group}) is active but did not change"
                else:
                    assert not changed, f"{name} ({group}) is frozen but changed"
                    assert p.grad is None and not p.requires_grad


def test_tied_embedding_is_one_trained_parameter(tiny_gpt2):
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=1))
    assert lisa.layer_map.tied
    run_steps(model, optimizer, lisa, range(3))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.requires_grad
    assert model.transformer.wte.weight in optimizer.state


def test_embeddings_and_head_can_be_switched_off(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = LisaConfig(gamma=1, interval=1, train_embeddings=False, train_head=False)
    lisa = Lisa(model, optimizer, config)
    before = snapshot(model)
    run_steps(model, optimizer, lisa, range(3))
    assert torch.equal(before["model.embed_tokens.weight"], model.model.embed_tokens.weight)
    assert torch.equal(before["lm_head.weight"], model.lm_head.weight)
    assert "embed" not in lisa.trainable_groups() and "head" not in lisa.trainable_groups()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_frozen_embeddings_stop_backward_at_the_lowest_active_block(tiny_llama):
    model = tiny_llama(num_blocks=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = LisaConfig(
        gamma=1, sampler=make_sampler("fixed", 6, blocks=(3,)), train_embeddings=False
    )
    lisa = Lisa(model, optimizer, config)
    fired = []
    for index, block in enumerate(model.model.layers):
        block.register_full_backward_hook(lambda *_, index=index: fired.append(index))
    lisa.begin_step()
    model(**make_batch(0)).loss.backward()
    assert sorted(set(fired)) == [3, 4, 5]
    assert model.model.embed_tokens.weight.grad is None
    for index in range(3):
        assert all(p.grad is None for p in model.model.layers[index].parameters())
    assert all(p.grad is not None for p in model.model.layers[3].parameters())


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_with_frozen_embeddings_still_trains_the_active_block(
    tiny_llama, use_reentrant
):
    model = tiny_llama(num_blocks=4)
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": use_reentrant}
    )
    model.train()
    # transformers adds input-grad hooks for reentrant checkpointing itself; without them the
    # engine must add them, or the active block behind frozen embeddings gets no grad.
    model.disable_input_require_grads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = LisaConfig(
        gamma=1, sampler=make_sampler("fixed", 4, blocks=(2,)), train_embeddings=False
    )
    lisa = Lisa(model, optimizer, config)
    lisa.begin_step()
    model(**make_batch(0)).loss.backward()
    assert all(p.grad is not None for p in model.model.layers[2].parameters())
    assert model.model.embed_tokens.weight.grad is None
    assert all(p.grad is None for p in model.model.layers[1].parameters())


# --- state policies and memory -----------------------------------------------------------


def adamw_minimum_bytes(params) -> int:
    """Independent of lisa.memory: exp_avg + exp_avg_sq in fp32 plus a 4-byte step, per param."""
    return sum(2 * p.numel() * 4 + 4 for p in params)


def held_state_bytes(optimizer) -> int:
    return sum(
        t.nbytes for entry in optimizer.state.values() for t in entry.values() if torch.is_tensor(t)
    )


def test_drop_holds_exactly_the_minimum_state_after_50_switches(tiny_llama):
    totals = {}
    for policy in ("drop", "keep"):
        model = tiny_llama(num_blocks=6)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=1, seed=1, state_policy=policy))
        held = []

        def record(model, optimizer, lisa, held=held):
            active = [p for p in model.parameters() if p.requires_grad]
            grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
            assert grads == sum(p.numel() * 4 for p in active)
            held.append((held_state_bytes(optimizer), adamw_minimum_bytes(active)))

        run_steps(model, optimizer, lisa, range(52), record=record)
        assert len(lisa.history) == 52
        totals[policy] = held
    for state_bytes, minimum in totals["drop"]:
        assert state_bytes == minimum
    assert len({state for state, _ in totals["drop"]}) == 1  # constant across switches
    assert totals["keep"][-1][0] > 1.5 * totals["drop"][-1][0]


def test_reset_clears_all_state_at_each_switch(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=2, state_policy="reset"))
    run_steps(model, optimizer, lisa, range(3))  # steps 0, 1 (period 0) and 2 (period 1)
    embed = model.model.embed_tokens.weight
    assert optimizer.state[embed]["step"].item() == 1  # restarted at the switch to period 1
    lisa.begin_step()  # step 3: same period, nothing cleared
    assert optimizer.state[embed]["step"].item() == 1
    lisa.begin_step()  # step 4: new period
    assert len(optimizer.state) == 0
    assert lisa.last_freed_bytes > 0


def test_sgd_momentum_drop_frees_momentum_buffers(tiny_llama):
    model = tiny_llama(num_blocks=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=1, seed=2))
    for seed in range(10):
        run_steps(model, optimizer, lisa, [seed])
        active = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in optimizer.state} == active
        assert held_state_bytes(optimizer) == sum(
            p.numel() * 4 for p in model.parameters() if p.requires_grad
        )
    assert lisa.freed_bytes_total > 0


# --- checkpoint / resume -----------------------------------------------------------------


def test_state_dict_round_trips_through_json(tiny_llama):
    model = tiny_llama(num_blocks=6)
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=2, interval=2))
    for _ in range(5):
        lisa.begin_step()
    state = json.loads(json.dumps(lisa.state_dict()))
    other = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=2, interval=2))
    other.load_state_dict(state)
    assert other.history == lisa.history and other.active_blocks == lisa.active_blocks
    assert [other.begin_step() for _ in range(6)] == [lisa.begin_step() for _ in range(6)]


@pytest.mark.parametrize("sampler", ["uniform", "cyclic"])
def test_plain_loop_resume_reproduces_the_uninterrupted_run(tiny_llama, sampler):
    config = LisaConfig(gamma=2, interval=5, sampler=sampler)
    model = tiny_llama(num_blocks=6, seed=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lisa = Lisa(model, optimizer, config)
    losses = run_steps(model, optimizer, lisa, range(12))

    first = tiny_llama(num_blocks=6, seed=4)
    first_optimizer = torch.optim.AdamW(first.parameters(), lr=1e-2)
    first_lisa = Lisa(first, first_optimizer, config)
    resumed_losses = run_steps(first, first_optimizer, first_lisa, range(7))
    checkpoint = {
        "model": copy.deepcopy(first.state_dict()),
        "optimizer": copy.deepcopy(first_optimizer.state_dict()),
        "lisa": json.dumps(first_lisa.state_dict()),
    }

    second = tiny_llama(num_blocks=6, seed=99)
    second.load_state_dict(checkpoint["model"])
    second_optimizer = torch.optim.AdamW(second.parameters(), lr=1e-2)
    second_optimizer.load_state_dict(checkpoint["optimizer"])
    second_lisa = Lisa(second, second_optimizer, config)
    second_lisa.load_state_dict(json.loads(checkpoint["lisa"]))
    resumed_losses += run_steps(second, second_optimizer, second_lisa, range(7, 12))

    assert second_lisa.history == lisa.history
    assert resumed_losses == losses
    for p, q in zip(second.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_another_model(tiny_llama):
    small = tiny_llama(num_blocks=4)
    lisa = Lisa(small, torch.optim.AdamW(small.parameters()), LisaConfig(gamma=1))
    lisa.begin_step()
    big = tiny_llama(num_blocks=6)
    other = Lisa(big, torch.optim.AdamW(big.parameters()), LisaConfig(gamma=1))
    with pytest.raises(ValueError, match="4 blocks but this model has 6"):
        other.load_state_dict(lisa.state_dict())


def test_explicit_layer_map_is_used(tiny_llama):
    model = tiny_llama()
    layer_map = LayerMap.from_model(model)
    lisa = Lisa(
        model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=1), layer_map=layer_map
    )
    assert lisa.layer_map is layer_map


# --- what the engine used to accept silently ------------------------------------------------


class ListSampler:
    """A user's sampler that returns whatever it was given (to test what the engine refuses)."""

    def __init__(self, num_blocks, gamma, draw, pi=None):
        self.num_blocks, self.gamma, self.draw = num_blocks, gamma, draw
        self.pi = [gamma / num_blocks] * num_blocks if pi is None else pi

    def sample(self, rng):
        return self.draw

    def inclusion_probabilities(self):
        return self.pi


def test_a_draw_with_a_repeated_block_is_refused_not_trained_short(tiny_llama):
    model = tiny_llama(num_blocks=4)
    config = LisaConfig(gamma=2, sampler=ListSampler(4, 2, (1, 1)))
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), config)
    with pytest.raises(ValueError, match=r"repeats a block"):
        lisa.begin_step()


def test_a_draw_of_the_wrong_size_is_refused(tiny_llama):
    model = tiny_llama(num_blocks=4)
    config = LisaConfig(gamma=2, sampler=ListSampler(4, 2, (3,)))
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), config)
    with pytest.raises(ValueError, match=r"returned 1 blocks .* gamma is 2"):
        lisa.begin_step()


@pytest.mark.parametrize(
    ("pi", "message"),
    [
        ([0.25, 0.25, 0.25, 0.25], "sum to 1 but its gamma is 2"),
        ([0.5, 0.5, 0.5], r"shape \(3,\)"),
        ([1.5, 0.5, 0.0, 0.0], r"must lie in \[0, 1\]"),
    ],
)
def test_a_sampler_whose_probabilities_disagree_with_its_gamma_is_refused(tiny_llama, pi, message):
    model = tiny_llama(num_blocks=4)
    config = LisaConfig(gamma=2, sampler=ListSampler(4, 2, (0, 1), pi=pi))
    with pytest.raises(ValueError, match=message):
        Lisa(model, torch.optim.AdamW(model.parameters()), config)


def test_a_policy_from_another_model_is_refused_at_the_point_of_use(tiny_llama):
    from diagnostics.policy import SamplingPolicy
    from lisa.signature import layer_signature

    wide = tiny_llama(num_blocks=4, hidden=64)
    narrow = tiny_llama(num_blocks=4, hidden=32)
    policy = SamplingPolicy(
        torch.full((4,), 0.5).numpy(), 2, tuple(f"block.{i}" for i in range(4)),
        signature=layer_signature(wide),
    )  # fmt: skip
    config = policy.to_lisa_config(interval=2)
    Lisa(wide, torch.optim.AdamW(wide.parameters()), config)  # its own model: fine
    with pytest.raises(ValueError, match=r"made for another model .*block 0 parameter"):
        Lisa(narrow, torch.optim.AdamW(narrow.parameters()), config)


def test_gamma_zero_says_that_no_block_trains(tiny_llama, caplog):
    model = tiny_llama(num_blocks=4)
    with caplog.at_level("WARNING", logger="lisa.engine"):
        lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=0))
    assert "gamma=0: no block trains, only embed, head, extras" in caplog.text
    assert lisa.begin_step() == ()


@pytest.mark.parametrize(
    "sampler",
    [
        make_sampler("uniform", 4, gamma=2),
        make_sampler("weighted", 4, inclusion_probabilities=[1.0, 0.5, 0.5, 0.0]),
        make_sampler("fixed", 4, blocks=(0, 3)),
        make_sampler("cyclic", 4, gamma=2, order="descending"),
    ],
    ids=lambda s: type(s).__name__,
)
def test_config_round_trips_through_json_whatever_the_sampler(tiny_llama, sampler):
    config = LisaConfig(gamma=2, interval=3, seed=7, sampler=sampler)
    restored = LisaConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored.sampler == type(sampler).__name__.removesuffix("Sampler").lower()
    model = tiny_llama(num_blocks=4)
    draws = []
    for chosen in (config, restored):
        lisa = Lisa(model, torch.optim.AdamW(model.parameters()), chosen)
        draws.append([lisa.begin_step(step) for step in range(0, 12, 3)])
    assert draws[0] == draws[1]  # the restored config trains the same blocks


def test_config_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown LisaConfig fields \['gama'\]"):
        LisaConfig.from_dict({"gama": 2})


def test_sampler_options_of_a_named_sampler_are_used_and_checked(tiny_llama):
    model = tiny_llama(num_blocks=4)
    config = LisaConfig(gamma=2, sampler="fixed", sampler_options={"blocks": [1, 2]})
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), config)
    assert lisa.begin_step() == (1, 2)
    wrong = LisaConfig(gamma=1, sampler="fixed", sampler_options={"blocks": [1, 2]})
    with pytest.raises(ValueError, match="draws 2 blocks"):
        Lisa(model, torch.optim.AdamW(model.parameters()), wrong)
    with pytest.raises(ValueError, match="JSON cannot store"):
        LisaConfig(sampler="fixed", sampler_options={"blocks": object()})
