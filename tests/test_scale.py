"""`hydiscgan scale`'s parts: the process tree and its memory, the number of speakers for N clients."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.orchestration import cli
from hydiscgan_fl.orchestration.processes import process_memory, process_tree
from hydiscgan_fl.orchestration.scale import TreeMemory, report, speakers_for


def test_the_tree_holds_children_and_its_memory_sums_their_proportional_sizes():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 * 2**20); time.sleep(30)"])
    try:
        import time
        time.sleep(1.5)
        assert child.pid in process_tree([os.getpid()])
        sampler = TreeMemory(lambda: [child.pid], 0.1, rounds_done=lambda: 3)
        total = sampler.sample()
        assert total == process_memory(child.pid) > 50 * 2**20 and sampler.after_round == {3: total}
    finally:
        child.kill()
        child.wait()
    assert process_memory(child.pid) == 0  # gone


def test_speakers_for_gives_one_training_speaker_per_client():
    speakers = speakers_for(30, seed=0)
    train = HyDiscGANConfig(dataset=f"synthetic:{speakers}").load_dataset(cached=False).split_subset("train")
    assert len(set(train.speakers.tolist())) >= 30
    fewer = HyDiscGANConfig(dataset=f"synthetic:{speakers - 1}").load_dataset(cached=False).split_subset("train")
    assert len(set(fewer.speakers.tolist())) < 30


def test_report_and_arguments():
    row = {"clients": "10", "speakers": "15", "rounds": "3", "first_round_s": "40", "s_per_round": "0.8",
           "peak_memory_mib": "1600", "memory_round2_mib": "1500", "memory_last_round_mib": "1515",
           "memory_growth_pct": "1.0", "date": "2026-12-02"}
    assert "| 10 | 15 | 3 | 40.0 | 0.8 | 1600 | 1500 / 1515 | +1.0% | 2026-12-02 |" in report([row])
    with pytest.raises(SystemExit):
        cli.main(["scale", "--clients", "1"])
