"""Cost accounting of generator fitting and sampling: wall time and the peak memory of the block."""

import time

import numpy as np

from medaug.pipelines.oversample.cost import measure


def test_measure_reports_time_and_the_peak_memory_reached_inside_the_block():
    with measure("cpu") as idle:
        time.sleep(0.05)
    with measure("cpu") as busy:
        block = np.ones(100 * 2**20 // 8)  # 100 MiB, touched
        time.sleep(0.5)  # 25 polls of 20 ms: the sampler runs even on a busy CI machine
        del block
    assert idle.seconds >= 0.05 and busy.seconds >= 0.05
    assert busy.memory_source == "process_rss_peak_during_block"
    assert busy.peak_memory_mb - idle.peak_memory_mb > 80, "the 100 MiB array shows in the block's peak"
    assert busy.as_dict()["peak_memory_mb"] == round(busy.peak_memory_mb, 1)
