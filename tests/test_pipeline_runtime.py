"""Pipelines of 2 gloo processes on loopback: exact lockstep gradients, a caller's own model and loss, faults,
resume, a stop on request, divergence, options of the training loop, mismatched ranks, each rank's
processor time.

Runs use the dry run's random stand-in images (an empty data directory), so each takes seconds.
"""
import copy
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from synthgrad import DecoupledSequential
from synthgrad.checkpoints import checkpoint_path
from synthgrad.engine import TrainConfig
from synthgrad.engine.classification import epoch_order
from synthgrad.engine.records import read_metrics
from synthgrad.errors import TrainingDiverged, TrainingInterrupted
from synthgrad.experiments.classifier import load_splits
from synthgrad.experiments.classifier_config import ClassifierConfig, build_model
from synthgrad.experiments.pipeline_classifier import PipelineRun, launch_pipeline_run, train_rank
from synthgrad.pipeline import PipelineConfig, RankSetup, Rendezvous, StageData, launch_local, run_rank
from synthgrad.pipeline.launch import FAILED_STATUS, free_port, rank_main
from synthgrad.pipeline.network_thread import ThreadClock, lower_priority, threads_named
from synthgrad.pipeline.runtime import checkpoint_steps, newest_common_step, stage_dir
from synthgrad.pipeline.split import split_model, stage_groups


def make_run(data_dir: Path, *, method="cdni", steps=400, timeout_s=20.0, seed=0, synth_every=1,
             **train) -> PipelineRun:
    options = {"steps": steps, "log_every": 8, "checkpoint_every": 40, "progress": False, **train}
    classifier = ClassifierConfig(data_dir=str(data_dir), download=False, method=method, layers=3, width=32,
                                  batch_size=32, seed=seed, synth_every=synth_every, dry_run=True,
                                  train=TrainConfig(**options))
    return PipelineRun(classifier, PipelineConfig(num_stages=2, timeout_s=timeout_s))


def start_ranks(runs, run_dir):
    """One process per rank running ``rank_main`` (what ``launch_local`` starts), for tests to kill."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=rank_main, args=(functools.partial(train_rank, run, run_dir),
                                                         Rendezvous("127.0.0.1", port, rank, 2)))
                 for rank, run in enumerate(runs)]
    for process in processes:
        process.start()
    return processes


def wait_for(paths, processes, limit_s=60.0):
    deadline = time.monotonic() + limit_s
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"{paths} never appeared"
        assert all(process.exitcode is None for process in processes), "a rank ended early"
        time.sleep(0.001)


def final_states(run_dir, key="model"):
    return [torch.load(stage_dir(run_dir, rank) / "final.pt", weights_only=True)[key] for rank in range(2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run that interrupted and resumed ones must end equal to."""
    root = tmp_path_factory.mktemp("reference")
    launch_pipeline_run(make_run(root / "no-data"), root / "run")
    return root / "run"


def assert_same_run(resumed_dir, reference_dir):
    for resumed, expected in zip(final_states(resumed_dir), final_states(reference_dir)):
        assert resumed.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(resumed[name], value), name
    records, expected = read_metrics(resumed_dir), read_metrics(reference_dir)
    assert [record["step"] for record in records] == [record["step"] for record in expected]
    assert records[-1]["step"] == 400
    for record, same in zip(records, expected):  # every value but the clock's
        assert {k: v for k, v in record.items() if k != "train/seconds"} == {
            k: v for k, v in same.items() if k != "train/seconds"}


def test_lockstep_gradients_equal_single_process_backprop(tmp_path):
    run = make_run(tmp_path / "no-data", method="backprop", steps=1, log_every=1, checkpoint_every=0,
                   optimizer="sgd", lr=1.0, lr_schedule="constant")
    launch_pipeline_run(run, tmp_path / "run")

    # the reference: the same initial model, the same first batch, plain autograd on a deep copy
    train_split, _, _ = load_splits("mnist", str(tmp_path / "no-data"), download=False, dry_run=True)
    torch.manual_seed(0)
    model = build_model(run.classifier)
    initial = copy.deepcopy(model)
    index = epoch_order(0, 0, len(train_split.labels))[:32]
    nn.functional.cross_entropy(model(train_split.inputs[index]), train_split.labels[index]).backward()
    groups = stage_groups(model, 2)
    for rank, (state, before, after) in enumerate(zip(final_states(tmp_path / "run"), split_model(initial, groups),
                                                      split_model(model, groups))):
        for name, param in after.chain.named_parameters():
            # SGD with lr 1: the pipeline's gradient is its step
            assert_close(dict(before.chain.named_parameters())[name].detach() - state[f"chain.{name}"], param.grad,
                         msg=lambda text: f"rank {rank} {name}: {text}")


def _regression_setup(rank: int, device: torch.device) -> RankSetup:
    """A caller's own model, data and loss: a 3-block regression network, mean squared error, no epochs."""
    torch.manual_seed(5)
    model = DecoupledSequential([nn.Sequential(nn.Linear(6, 8), nn.Tanh()), nn.Linear(8, 8), nn.Linear(8, 2)],
                                [None, None])
    inputs = torch.randn(4, 16, 6, generator=torch.Generator().manual_seed(6))  # (steps, B, features)
    targets = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(7))
    data = StageData(16, inputs=inputs.__getitem__, targets=targets.__getitem__,
                     eval_inputs=lambda: inputs[:2], eval_targets=lambda: targets[:2])
    return RankSetup(model, [range(0, 1), range(1, 3)], data, example_input=inputs[0], loss_fn=nn.functional.mse_loss)


def _regression_rank(run_dir: Path, rendezvous: Rendezvous, stop_requested) -> None:
    train_config = TrainConfig(steps=4, log_every=2, optimizer="sgd", lr=0.1, lr_schedule="constant", progress=False)
    run_rank(_regression_setup, rendezvous, run_dir, pipeline=PipelineConfig(schedule="lockstep", micro_batches=2),
             train_config=train_config, stop_requested=stop_requested)


def test_the_pipeline_trains_the_callers_model_and_data_with_its_loss(tmp_path):
    summary = launch_local(functools.partial(_regression_rank, tmp_path), 2, tmp_path, timeout_s=20.0)
    reference = _regression_setup(0, torch.device("cpu"))
    optimizer = torch.optim.SGD(reference.model.parameters(), lr=0.1)
    for step in range(4):
        optimizer.zero_grad()
        nn.functional.mse_loss(reference.model(reference.data.inputs(step)), reference.data.targets(step)).backward()
        optimizer.step()
    stages = split_model(reference.model, reference.groups)
    for state, expected in zip(final_states(tmp_path), stages):
        for name, value in expected.state_dict().items():
            assert_close(state[name], value)
    assert summary["schedule"] == "lockstep" and summary["steps"] == 4 and "test_loss" in summary
    assert "train/seconds" in read_metrics(tmp_path)[0]


def test_a_killed_rank_stops_the_other_with_its_name_and_resume_continues_the_same_run(tmp_path, capfd, reference):
    run = make_run(tmp_path / "no-data")
    victim = tmp_path / "victim"
    processes = start_ranks([run, run], victim)
    wait_for([stage_dir(victim, rank) / "checkpoint-00000040.pt" for rank in range(2)], processes)
    processes[1].kill()
    killed_at = time.monotonic()
    processes[0].join(timeout=30)
    assert processes[0].exitcode == FAILED_STATUS, "the kill landed after the run ended; make the run longer"
    assert time.monotonic() - killed_at < run.pipeline.timeout_s
    assert "synthgrad: rank 0: error: rank 1 closed its connection" in capfd.readouterr().err

    launch_pipeline_run(run, victim, resume=True)
    assert_same_run(victim, reference)


def test_a_run_resumes_from_the_newest_step_that_every_stage_has():
    assert newest_common_step([[100, 200, 300], [200, 300, 400], [300, 200]]) == 300
    assert newest_common_step(iter([[100], [200]])) is None  # a stage wrote no step the other has


def test_a_stop_request_stops_every_rank_at_one_step_with_checkpoints_and_resume_continues(tmp_path, reference):
    run = make_run(tmp_path / "no-data", checkpoint_every=0)
    stopped = tmp_path / "stopped"
    first_record = stopped / "metrics.jsonl"  # the request comes once training runs, as a Ctrl-C would
    with pytest.raises(TrainingInterrupted) as interrupted:
        launch_pipeline_run(run, stopped, stop_requested=first_record.exists)
    step = interrupted.value.step
    assert 0 < step < 400 and step % run.classifier.train.log_every == 0
    assert interrupted.value.run_dir == stopped
    assert [checkpoint_steps(stopped, rank) for rank in range(2)] == [[step], [step]]
    assert [record["step"] for record in read_metrics(stopped)][-1] == step
    # the unlocked schedule does not drain: the first rank's checkpoint holds the step whose target is pending
    pending = torch.load(checkpoint_path(stage_dir(stopped, 0), step), weights_only=True)["task"]["pending"]
    assert list(pending) == [step - 1]

    # each rank's processor seconds so far are in its checkpoint, and the resumed run adds to them
    for rank in range(2):
        path = checkpoint_path(stage_dir(stopped, rank), step)
        state = torch.load(path, weights_only=True)
        assert state["engine"]["cpu_seconds"] > 0
        state["engine"]["cpu_seconds"], state["task"]["network_seconds"] = 1000.0, 100.0
        torch.save(state, path)
    summary = launch_pipeline_run(run, stopped, resume=True)
    assert_same_run(stopped, reference)
    samples = 400 * run.classifier.batch_size
    assert all(value > 1000 * 1e6 / samples for value in summary["cpu_us_per_sample"])
    assert all(value is None or value >= 100 * 1e6 / samples for value in summary["network_cpu_us_per_sample"])


def test_stats_every_and_synth_every_are_honoured(tmp_path):
    summary = launch_pipeline_run(make_run(tmp_path / "no-data", steps=48, stats_every=16, checkpoint_every=0),
                                  tmp_path / "every")
    cut = next(key.rpartition("/")[2] for key in summary if key.startswith("sg/cos/"))
    records = read_metrics(tmp_path / "every")
    assert [record["step"] for record in records if f"sg/cos/{cut}" in record] == [16, 32, 48]
    assert all(record[f"sg/staleness/{cut}"] == record[f"sg/staleness_max/{cut}"] == 1 for record in records)

    launch_pipeline_run(make_run(tmp_path / "no-data", steps=48, stats_every=16, synth_every=3, checkpoint_every=0),
                        tmp_path / "third")
    records = read_metrics(tmp_path / "third")
    # a measurement falls on the first synthesizer step from every 16th on: S(15) at step 16, S(30) at 31
    assert [record["step"] for record in records if f"sg/cos/{cut}" in record] == [24, 32]
    bottom, top = final_states(tmp_path / "third", "optimizer")
    groups = {group["name"]: group["params"][0] for group in bottom["param_groups"]}
    # Adam counts its steps: the synthesizer trained on the targets of steps 0, 3, ..., 45, the blocks on every step
    assert bottom["state"][groups["synthesizers"]]["step"] == 16
    assert bottom["state"][groups["blocks"]]["step"] == top["state"][0]["step"] == 48  # decoupled_lr unset


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_a_synthesizer_trains_on_the_target_of_every_step_but_the_last_max_staleness(tmp_path, max_staleness):
    run = make_run(tmp_path / "no-data", steps=16, checkpoint_every=0)
    run.pipeline.max_staleness = max_staleness
    launch_pipeline_run(run, tmp_path / "run")
    cut = "0"  # stage_groups puts the boundary after the first block of this model
    assert {record[f"sg/staleness_max/{cut}"] for record in read_metrics(tmp_path / "run")} == {max_staleness}
    bottom, _ = final_states(tmp_path / "run", "optimizer")
    synthesizer = next(group["params"][0] for group in bottom["param_groups"] if group["name"] == "synthesizers")
    assert bottom["state"][synthesizer]["step"] == 16 - max_staleness


def test_the_summary_gives_each_ranks_processor_time_per_training_sample(tmp_path):
    summary = launch_pipeline_run(make_run(tmp_path / "no-data", steps=16, checkpoint_every=0), tmp_path / "run")
    assert len(summary["cpu_us_per_sample"]) == len(summary["network_cpu_us_per_sample"]) == 2
    assert all(value > 0 for value in summary["cpu_us_per_sample"])
    assert summary["samples_per_s"] == pytest.approx(16 * 32 / summary["train_seconds"])
    if Path("/proc/self/task").is_dir():  # else the network thread's time is not known: None
        assert all(value >= 0 for value in summary["network_cpu_us_per_sample"])


def test_a_non_finite_loss_stops_every_rank_before_any_checkpoint(tmp_path, capfd):
    run = make_run(tmp_path / "no-data", optimizer="sgd", lr=1e30, checkpoint_every=8)
    with pytest.raises(TrainingDiverged):
        launch_pipeline_run(run, tmp_path / "run")
    err = capfd.readouterr().err
    assert "synthgrad: rank 0: error: training diverged between steps 0 and 8: train/loss is nan" in err
    assert "no checkpoint was written before it" in err and err.count("training diverged between") == 1
    assert [checkpoint_steps(tmp_path / "run", rank) for rank in range(2)] == [[], []]


def test_a_hung_rank_makes_the_other_exit_within_the_timeout(tmp_path, capfd):
    run = make_run(tmp_path / "no-data", steps=100000, timeout_s=3.0)
    processes = start_ranks([run, run], tmp_path / "run")
    try:
        wait_for([stage_dir(tmp_path / "run", 1) / "checkpoint-00000040.pt"], processes)
        os.kill(processes[1].pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        processes[0].join(timeout=30)
        waited = time.monotonic() - stopped_at
    finally:
        for process in processes:
            process.kill()
    assert processes[0].exitcode == FAILED_STATUS
    assert waited < 3.0 + 5.0
    assert "synthgrad: rank 0: error: rank 1 sent nothing for 3 s" in capfd.readouterr().err


def test_ranks_started_with_different_configurations_refuse_to_train(tmp_path, capfd):
    runs = [make_run(tmp_path / "no-data", seed=seed) for seed in (0, 1)]
    processes = start_ranks(runs, tmp_path / "run")
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [2, 2]
    err = capfd.readouterr().err
    assert "rank 1: classifier.seed (0 vs 1)" in err and err.count("different configurations") == 2
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_pipeline_imports_nothing_from_experiments_bench_or_cli():
    code = ("import sys, synthgrad.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith(('synthgrad.experiments', 'synthgrad.bench', "
            "'synthgrad.cli'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from /proc (Linux)")
def test_the_network_thread_alone_gets_the_lower_priority():
    named, release = threading.Event(), threading.Event()
    tids = []

    def network_thread():
        tids.append(threading.get_native_id())
        Path(f"/proc/self/task/{tids[0]}/comm").write_text("gloo_tcp_test")
        named.set()
        release.wait(30)

    thread = threading.Thread(target=network_thread)
    thread.start()
    try:
        named.wait(30)
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lower_priority("gloo_tcp_test", 10)
        lower_priority("no such thread", 10)
        assert os.getpriority(os.PRIO_PROCESS, tids[0]) == max(10, before)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # this thread keeps its own
    finally:
        release.set()
        thread.join()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are listed from /proc (Linux)")
def test_threads_are_found_by_name_with_their_processor_time():
    this_thread = Path(f"/proc/self/task/{threading.get_native_id()}")
    name = (this_thread / "comm").read_text().strip()
    assert this_thread in threads_named(name)  # with any other thread of this name
    assert threads_named("no such thread") == [] and ThreadClock("no such thread")() == 0
    clock = ThreadClock(name)
    before, spun = clock(), time.thread_time()
    while time.thread_time() - spun < 0.1:
        pass
    assert clock() - before >= 0.05  # the kernel counts in clock ticks
