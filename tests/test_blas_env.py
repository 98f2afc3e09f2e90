"""``import ddp`` sets OpenBLAS's spin time before NumPy loads OpenBLAS; ``ddprun`` passes it on
(``ddp.config.default_blas_env``)."""

import os
import subprocess
import sys

from ddp import config


def _run(code, env_value):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


def test_import_ddp_sets_a_short_blas_spin_unless_the_user_chose_one():
    code = "import os, ddp; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    assert _run(code, None) == [config.BLAS_SPIN_LOG2_CYCLES]
    assert _run(code, "22") == ["22"]


def test_import_ddp_sets_it_before_numpy_is_imported():
    # a finder that records the variable at the moment NumPy (hence OpenBLAS) starts to load
    code = ("import os, sys\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numpy' and 'seen' not in globals():\n"
            "            globals()['seen'] = os.environ.get('OPENBLAS_THREAD_TIMEOUT')\n"
            "sys.meta_path.insert(0, Spy())\n"
            "import ddp\n"
            "print(seen)\n")
    assert _run(code, None) == [config.BLAS_SPIN_LOG2_CYCLES]


def test_ddprun_hands_it_to_the_ranks(monkeypatch):
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    assert config.child_env(2)["OPENBLAS_THREAD_TIMEOUT"] == config.BLAS_SPIN_LOG2_CYCLES
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "9")
    assert config.child_env(2)["OPENBLAS_THREAD_TIMEOUT"] == "9"
