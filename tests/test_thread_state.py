"""Per-thread state: the default device, grad mode and the default generator of one thread
(one simulated rank of the ``threads`` backend) never leak into another."""

from __future__ import annotations

import threading

import numpy as np

import ddp


def _in_thread(fn):
    """Run ``fn`` in a new thread; return its result (re-raising its exception)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_device_block_in_one_thread_leaves_another_alone():
    inside, checked = threading.Event(), threading.Event()
    seen = {}

    def rank_in_block():
        with ddp.device("cuda:1"):
            seen["own"] = ddp.get_default_device()
            inside.set()
            checked.wait(timeout=30)

    def other_rank():
        inside.wait(timeout=30)
        seen["other"] = ddp.get_default_device()
        seen["tensor"] = ddp.zeros(2).device  # would fail on cuda:1 without a GPU
        checked.set()

    threads = [threading.Thread(target=rank_in_block), threading.Thread(target=other_rank)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == {"own": ddp.device("cuda:1"), "other": ddp.device("cpu"),
                    "tensor": ddp.device("cpu")}
    assert ddp.get_default_device() == ddp.device("cpu")


def test_main_thread_default_reaches_later_threads_but_theirs_stays_theirs():
    ddp.set_default_device("cuda:1")
    try:
        assert _in_thread(ddp.get_default_device) == ddp.device("cuda:1")

        def set_own():
            ddp.set_default_device("cpu")
            return ddp.get_default_device()

        assert _in_thread(set_own) == ddp.device("cpu")
        assert ddp.get_default_device() == ddp.device("cuda:1")  # main keeps its own
        with ddp.device("cpu"):  # a block in main is main's only
            assert _in_thread(ddp.get_default_device) == ddp.device("cuda:1")
    finally:
        ddp.set_default_device(None)
    assert _in_thread(ddp.get_default_device) == ddp.device("cpu")


def test_grad_mode_and_generator_are_per_thread():
    ddp.manual_seed(5)
    expected = ddp.rand(3).numpy()
    ddp.manual_seed(5)
    with ddp.no_grad():
        assert _in_thread(ddp.is_grad_enabled) is True

        def seeded_draw():
            ddp.manual_seed(123)  # must not move the main thread's generator
            return ddp.rand(3).numpy()

        other = _in_thread(seeded_draw)
    np.testing.assert_array_equal(ddp.rand(3).numpy(), expected)
    assert not np.array_equal(other, expected)
