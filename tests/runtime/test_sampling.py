"""Sampling (greedy, temperature, top-k/p, min-p, penalties, logit bias, seeds) and stop strings."""

import pytest
import torch

from qla_agent.errors import RequestError
from qla_agent.runtime.requests import SamplingParams
from qla_agent.runtime.sampling import SamplerState, mix_seed, sample
from qla_agent.runtime.stopping import StopMatcher

V = 12


def _row(params: SamplingParams, *, seed: int = 7, counter: int = 0, prompt=()) -> SamplerState:
    return SamplerState(params, seed=seed, counter=counter, prompt_tokens=list(prompt), vocab_size=V,
                        device=torch.device("cpu"))


def _logits(seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed))


def _draws(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    row = _row(params)
    gen = torch.Generator()
    return [sample(logits.clone(), [row], generator=gen)[0] for _ in range(n)]


def test_greedy_is_argmax():
    logits = _logits(n=4)
    rows = [_row(SamplingParams(temperature=0.0)) for _ in range(4)]
    out = sample(logits.clone(), rows, generator=torch.Generator())
    assert out == logits.argmax(-1).tolist()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=1),
    SamplingParams(temperature=1.3, top_p=1e-6),
    SamplingParams(temperature=1.0, min_p=1.0),
], ids=["top_k1", "top_p_tiny", "min_p1"])
def test_filters_that_leave_one_token_are_greedy(params):
    logits = _logits(3)
    assert set(_draws(logits, params, 30)) == {int(logits.argmax())}


def test_temperature_sampling_matches_softmax_frequencies():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)])
    n = 4000
    draws = _draws(logits, SamplingParams(temperature=0.8), n)
    ref = torch.softmax(logits[0] / 0.8, -1)
    out = torch.bincount(torch.tensor(draws), minlength=V).float() / n
    # 4000 draws: standard error of each frequency ≤ 0.008.
    assert torch.allclose(out, ref, atol=0.03)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.5] + [0.0] * (V - 5)])
    assert set(_draws(logits, SamplingParams(temperature=5.0, top_k=3), 300)) == {0, 1, 2}
    probs = torch.softmax(logits[0], -1)
    # Nucleus: the smallest head whose mass reaches top_p.
    top_p = float(probs[:2].sum()) - 1e-4
    assert set(_draws(logits, SamplingParams(temperature=1.0, top_p=top_p), 300)) == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = torch.tensor([[3.0, 2.9, 0.0] + [-5.0] * (V - 3)])
    assert set(_draws(logits, SamplingParams(temperature=1.0, min_p=0.5), 300)) == {0, 1}


def test_seeded_draws_do_not_depend_on_the_batch():
    logits = _logits(5, n=3)
    params = SamplingParams(temperature=1.5, top_p=0.9)
    alone = [sample(logits[i : i + 1].clone(), [_row(params, seed=i)], generator=torch.Generator())[0] for i in range(3)]
    batch = sample(logits.clone(), [_row(params, seed=i) for i in range(3)], generator=torch.Generator())
    assert batch == alone


def test_counter_advances_and_seed_reproduces():
    logits = _logits(6)
    params = SamplingParams(temperature=2.0)
    a, b = _row(params, seed=11), _row(params, seed=11)
    gen = torch.Generator()
    seq_a = [sample(logits.clone(), [a], generator=gen)[0] for _ in range(20)]
    seq_b = [sample(logits.clone(), [b], generator=gen)[0] for _ in range(20)]
    assert seq_a == seq_b and a.counter == 20
    # Resuming a stream at counter 10 gives the same tail.
    c = _row(params, seed=11, counter=10)
    assert [sample(logits.clone(), [c], generator=gen)[0] for _ in range(10)] == seq_a[10:]
    assert len(set(seq_a)) > 1
    assert mix_seed(1, 2) != mix_seed(2, 1) and 0 <= mix_seed(2**62, 2**40) < 2**63


def test_repetition_penalty_hf_rule():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.2] + [-9.0] * (V - 4)])
    # Token 0 seen in the prompt: 2.0 / 1.5 < 1.9, so token 1 wins.
    assert sample(logits.clone(), [_row(SamplingParams(temperature=0.0, repetition_penalty=1.5), prompt=[0])],
                  generator=torch.Generator()) == [1]
    out = logits.clone()
    sample(out, [_row(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[0, 2])], generator=torch.Generator())
    ref = logits.clone()
    ref[0, 0] = 1.0
    ref[0, 2] = -2.0
    assert torch.equal(out, ref)


def test_presence_and_frequency_penalties_count_the_completion():
    row = _row(SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25), prompt=[3])
    for token in (1, 1, 2):
        row.observe(token)
    out = torch.zeros(1, V)
    sample(out, [row], generator=torch.Generator())
    ref = torch.zeros(1, V)
    ref[0, 1] = -(0.5 + 2 * 0.25)
    ref[0, 2] = -(0.5 + 0.25)
    assert torch.equal(out, ref)


def test_logit_bias_forces_and_bans():
    logits = _logits(8)
    best = int(logits.argmax())
    forced = (best + 1) % V
    params = SamplingParams(temperature=0.0, logit_bias={forced: 100.0})
    assert _draws(logits, params, 1) == [forced]
    banned = SamplingParams(temperature=1.0, logit_bias={best: -100.0})
    assert best not in _draws(logits, banned, 200)


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"min_p": 1.5},
                                    {"repetition_penalty": 0.0}, {"max_tokens": 0}, {"stop": ("",)}])
def test_bad_params_are_refused(kwargs):
    with pytest.raises(RequestError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def _stream(stops, deltas):
    m = StopMatcher(stops)
    out = [m.feed(d) for d in deltas]
    return out, m.flush(), m.stopped


def test_stop_string_split_over_deltas_is_never_emitted():
    out, tail, stopped = _stream(["</answer>"], ["The ans", "wer is 4</an", "swer> and more"])
    assert out == ["The ans", "wer is 4", ""] and tail == "" and stopped


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    out, tail, stopped = _stream(["STOP"], ["abc ST", "ART", " end S"])
    assert out == ["abc ", "START", " end "] and tail == "S" and not stopped


def test_earliest_of_several_stops_wins():
    out, _, stopped = _stream(["a", "bb"], ["xxbba"])
    assert out == ["xx"] and stopped
    out, _, stopped = _stream(["ba", "xb"], ["xx", "bba"])
    assert out == ["x", ""] and stopped


def test_no_stops_passes_text_through():
    out, tail, stopped = _stream([], ["a", "b"])
    assert out == ["a", "b"] and tail == "" and not stopped
