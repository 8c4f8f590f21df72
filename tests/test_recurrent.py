"""Oracle tests of truncated BPTT with synthetic gradients (``synthgrad.recurrent``) against autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from synthgrad.recurrent import LSTMCore, backward_through_chunks
from synthgrad.synthesizers import LinearSynthesizer

BATCH, LENGTH, INPUT, HIDDEN, OUTPUT = 3, 11, 4, 5, 2



def _problem(num_layers: int = 2):
    torch.manual_seed(0)
    core = LSTMCore(INPUT, HIDDEN, OUTPUT, num_layers=num_layers).double()
    inputs = torch.randn(BATCH, LENGTH, INPUT, dtype=torch.float64)
    targets = torch.randn(BATCH, LENGTH, OUTPUT, dtype=torch.float64)

    def chunk_loss(outputs, start, stop):  # summed over steps, mean over the batch
        return (outputs - targets[:, start:stop]).pow(2).sum() / BATCH

    return core, inputs, chunk_loss


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in module.parameters()]


def test_without_synthesizer_gradients_equal_pytorch_truncated_bptt():
    core, inputs, chunk_loss = _problem()
    for truncation in (1, 3, 4, LENGTH):
        core.zero_grad()
        result = backward_through_chunks(core, inputs, chunk_loss, truncation)
        ours = _grads(core)

        core.zero_grad()  # the textbook recipe: detach the state every T steps, one backward
        state, total = core.initial_state(BATCH, dtype=torch.float64), 0.0
        for start in range(0, LENGTH, truncation):
            outputs, state = core(inputs[:, start:start + truncation], state.detach())
            total = total + chunk_loss(outputs, start, start + outputs.shape[1])
        total.backward()
        for mine, reference in zip(ours, _grads(core)):
            assert_close(mine, reference, rtol=1e-12, atol=1e-14)
        assert abs(result.loss - total.item()) < 1e-9
        assert_close(result.state, state.detach())


class _ExactFutureGradient(nn.Module):
    """A 'synthesizer' that returns, boundary after boundary, the true per-example gradient B * dL/ds."""

    def __init__(self, true_grads: list[torch.Tensor]) -> None:
        super().__init__()
        self.true_grads = list(true_grads)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.true_grads.pop(0) * state.shape[0]


def _full_bptt(core, inputs, chunk_loss, truncation):
    """Gradients of full BPTT, and the true gradient w.r.t. the state at every chunk boundary."""
    core.zero_grad()
    state, total, boundaries = core.initial_state(BATCH, dtype=torch.float64), 0.0, []
    for start in range(0, LENGTH, truncation):
        outputs, state = core(inputs[:, start:start + truncation], state)
        total = total + chunk_loss(outputs, start, start + outputs.shape[1])
        state.retain_grad()
        boundaries.append(state)
    total.backward()
    return _grads(core), [boundary.grad.clone() for boundary in boundaries[:-1]]


def test_exact_future_gradient_makes_chunked_training_equal_full_bptt():
    core, inputs, chunk_loss = _problem()
    for truncation in (2, 3, 5):
        full_grads, true_state_grads = _full_bptt(core, inputs, chunk_loss, truncation)
        core.zero_grad()
        result = backward_through_chunks(core, inputs, chunk_loss, truncation,
                                         synthesizer=_ExactFutureGradient(true_state_grads))
        for mine, reference in zip(_grads(core), full_grads):
            assert_close(mine, reference)
        # every bootstrapped target equals the exact gradient the synthesizer returned: zero loss
        assert len(result.synthesizer_losses) == len(true_state_grads)
        assert max(result.synthesizer_losses) < 1e-20
        assert min(result.cosines) > 1 - 1e-9


def test_exact_future_gradient_across_windows_of_a_stream():
    """A stream cut into two windows (state carried, the first not ending the sequence) still equals
    full BPTT when the synthesizer is exact, and the boundary between windows is trained too."""
    core, inputs, chunk_loss = _problem(num_layers=1)
    truncation, split = 2, 6
    full_grads, true_state_grads = _full_bptt(core, inputs, chunk_loss, truncation)
    core.zero_grad()
    oracle = _ExactFutureGradient(true_state_grads)
    first = backward_through_chunks(core, inputs[:, :split], chunk_loss, truncation, synthesizer=oracle,
                                    sequence_ends=False)
    oracle.true_grads.insert(0, true_state_grads[split // truncation - 1])  # asked again for the entering state

    def shifted_loss(outputs, start, stop):
        return chunk_loss(outputs, start + split, stop + split)

    second = backward_through_chunks(core, inputs[:, split:], shifted_loss, truncation, state=first.state,
                                     synthesizer=oracle, train_entering_state=True)
    for mine, reference in zip(_grads(core), full_grads):
        assert_close(mine, reference)
    assert len(first.synthesizer_losses) + len(second.synthesizer_losses) == len(true_state_grads)
    assert max(second.synthesizer_losses) < 1e-20


def test_zero_initialised_synthesizer_leaves_truncated_bptt_unchanged_and_learns():
    core, inputs, chunk_loss = _problem()
    backward_through_chunks(core, inputs, chunk_loss, 3)
    plain = _grads(core)
    core.zero_grad()
    synthesizer = LinearSynthesizer(core.state_dim).double()
    result = backward_through_chunks(core, inputs, chunk_loss, 3, synthesizer=synthesizer)
    for mine, reference in zip(_grads(core), plain):
        assert_close(mine, reference)
    assert synthesizer.net[0].weight.grad.abs().sum() > 0  # regression onto the bootstrapped target
    assert len(result.synthesizer_losses) == 3  # boundaries after steps 3, 6, 9 (none at the end)


def test_aux_head_trains_the_core_and_weight_zero_is_plain_dni():
    core, inputs, chunk_loss = _problem()
    torch.manual_seed(1)
    synthesizer = LinearSynthesizer(core.state_dim).double()
    nn.init.normal_(synthesizer.net[0].weight, std=0.1)  # a non-zero synthetic gradient to predict
    aux_head = nn.Linear(core.state_dim, core.state_dim).double()
    backward_through_chunks(core, inputs, chunk_loss, 2, synthesizer=synthesizer)
    dni = _grads(core)
    for weight, expect_equal in ((0.0, True), (1.0, False)):
        core.zero_grad()
        aux_head.zero_grad()
        result = backward_through_chunks(core, inputs, chunk_loss, 2, synthesizer=synthesizer,
                                         aux_head=aux_head, aux_weight=weight)
        same = all(torch.allclose(mine, reference) for mine, reference in zip(_grads(core), dni))
        assert same == expect_equal
        assert len(result.aux_losses) == 4  # boundaries 1..4 predict boundaries 2..5
        assert aux_head.weight.grad is not None


def test_lstm_core_state_layout_matches_nn_lstm():
    core, inputs, _ = _problem()
    state = torch.randn(BATCH, core.state_dim, dtype=torch.float64)
    outputs, new_state = core(inputs, state)
    h0, c0 = state.view(BATCH, 2, 2, HIDDEN).unbind(1)
    top, (h, c) = core.lstm(inputs, (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
    assert_close(outputs, core.readout(top))
    assert_close(new_state[:, :2 * HIDDEN], h.transpose(0, 1).reshape(BATCH, -1))
    assert_close(new_state[:, 2 * HIDDEN:], c.transpose(0, 1).reshape(BATCH, -1))


class _RecordingSynthesizer(nn.Module):
    """A fixed random linear synthesizer that keeps every prediction, so that the target it was
    regressed onto can be read back from the prediction's gradient (d loss / d prediction = 2 (prediction
    - target) / B for ``synthesizer_loss``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(dim, dim).double()
        self.predictions: list[torch.Tensor] = []

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        prediction = self.linear(state)
        prediction.retain_grad()
        self.predictions.append(prediction)
        return prediction

    def targets(self) -> list[torch.Tensor]:
        return [(p - p.grad * p.shape[0] / 2).detach() for p in self.predictions if p.grad is not None]


def _damped_targets(core, inputs, chunk_loss, truncation, synthesizer, decay):
    """The oracle: at each boundary k, B * d/ds_k [loss of chunk k+1 + decay * <sg_{k+1}, s_{k+1}> / B],
    by autograd from the boundary states of a plain forward pass."""
    with torch.no_grad():
        boundaries, state = [], core.initial_state(BATCH, dtype=torch.float64)
        for start in range(0, LENGTH, truncation):
            _, state = core(inputs[:, start:start + truncation], state)
            boundaries.append(state)
    targets = []
    for index, start in enumerate(range(truncation, LENGTH, truncation)):
        entering = boundaries[index].clone().requires_grad_()
        outputs, leaving = core(inputs[:, start:start + truncation], entering)
        total = chunk_loss(outputs, start, start + outputs.shape[1])
        if start + truncation < LENGTH:  # the next boundary's synthetic gradient, unless the sequence ends
            total = total + decay * (synthesizer.linear(leaving.detach()).detach() * leaving).sum() / BATCH
        targets.append(torch.autograd.grad(total, entering)[0] * BATCH)
    return targets


def test_target_decay_damps_only_the_bootstrapped_part_of_the_target():
    core, inputs, chunk_loss = _problem()
    core_grads = None
    for decay in (0.0, 0.5, 1.0):
        core.zero_grad()
        synthesizer = _RecordingSynthesizer(core.state_dim)
        backward_through_chunks(core, inputs, chunk_loss, 3, synthesizer=synthesizer, target_decay=decay)
        targets = synthesizer.targets()
        expected = _damped_targets(core, inputs, chunk_loss, 3, synthesizer, decay)
        assert len(targets) == len(expected) == 3
        for mine, reference in zip(targets, expected):
            assert_close(mine, reference)
        # the chunks always receive the full synthetic gradient: the core's gradients do not depend on decay
        if core_grads is None:
            core_grads = _grads(core)
        for mine, reference in zip(_grads(core), core_grads):
            assert_close(mine, reference)


def test_target_decay_zero_is_the_next_chunks_loss_gradient_alone():
    core, inputs, chunk_loss = _problem()
    synthesizer = _RecordingSynthesizer(core.state_dim)
    backward_through_chunks(core, inputs, chunk_loss, 3, synthesizer=synthesizer, target_decay=0.0)
    with torch.no_grad():
        _, state = core(inputs[:, :3], core.initial_state(BATCH, dtype=torch.float64))
    entering = state.clone().requires_grad_()
    outputs, _ = core(inputs[:, 3:6], entering)
    (loss_grad,) = torch.autograd.grad(chunk_loss(outputs, 3, 6), entering)
    assert_close(synthesizer.targets()[0], loss_grad * BATCH)


def test_target_decay_outside_zero_one_is_refused():
    core, inputs, chunk_loss = _problem()
    for decay in (-0.1, 1.5):
        with pytest.raises(ValueError, match="target_decay"):
            backward_through_chunks(core, inputs, chunk_loss, 3, target_decay=decay)


def test_squashed_cell_input_reads_h_and_tanh_of_c():
    from synthgrad.recurrent import SquashedCellInput

    torch.manual_seed(0)
    inner = nn.Linear(2 * HIDDEN, 2 * HIDDEN).double()
    wrapped = SquashedCellInput(inner)
    state = torch.randn(BATCH, 2 * HIDDEN, dtype=torch.float64) * 50  # a drifted cell state
    h, c = state[:, :HIDDEN], state[:, HIDDEN:]
    assert_close(wrapped(state), inner(torch.cat([h, torch.tanh(c)], dim=1)))
    assert list(wrapped.parameters()) == list(inner.parameters())  # its optimizer sees the same parameters


class _ContextRecorder(nn.Module):
    """Predicts zero and records the context it was given at each boundary."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[torch.Tensor] = []

    def forward(self, state: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.contexts.append(context)
        return torch.zeros_like(state)


def test_boundary_context_reaches_the_synthesizer_at_each_boundary():
    core, inputs, chunk_loss = _problem(num_layers=1)

    def step_context(step):  # the boundary's step, as a context
        return torch.full((BATCH, 1), float(step), dtype=torch.float64)

    synthesizer = _ContextRecorder()
    backward_through_chunks(core, inputs, chunk_loss, 3, synthesizer=synthesizer, boundary_context=step_context)
    assert [context[0, 0].item() for context in synthesizer.contexts] == [3, 6, 9]  # none at the sequence's end
    synthesizer.contexts.clear()
    backward_through_chunks(core, inputs, chunk_loss, 3, synthesizer=synthesizer, boundary_context=step_context,
                            state=core.initial_state(BATCH, dtype=torch.float64), sequence_ends=False,
                            train_entering_state=True)
    assert [context[0, 0].item() for context in synthesizer.contexts] == [0, 3, 6, 9, 11]  # and a stream's ends


def test_dropout_acts_on_the_outputs_in_training_only_and_never_on_the_state():
    torch.manual_seed(0)
    plain = LSTMCore(INPUT, HIDDEN, OUTPUT, num_layers=1)
    dropped = LSTMCore(INPUT, HIDDEN, OUTPUT, num_layers=1, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout has no parameters: the same network
    inputs, state = torch.randn(BATCH, LENGTH, INPUT), plain.initial_state(BATCH)
    reference, reference_state = plain(inputs, state)
    first, first_state = dropped(inputs, state)
    second, _ = dropped(inputs, state)
    assert not torch.equal(first, second)  # a fresh mask each call
    assert_close(first_state, reference_state)  # the state a synthesizer reads is untouched
    dropped.eval()
    assert_close(dropped(inputs, state)[0], reference)
    with pytest.raises(ValueError, match="dropout must be in"):
        LSTMCore(INPUT, HIDDEN, OUTPUT, dropout=1.0)
