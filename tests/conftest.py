"""Test-wide settings and shared fixtures."""

import pytest
import torch
from tiny_data import make_tiny_dataset

# The tests run tiny tensors, where a second intra-op thread costs more than it gives and,
# on a busy machine, spin-waiting threads slow every operation down.
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    """After the tests: how many inputs each fuzz target was given, by outcome."""
    from fuzz_tally import summary_lines  # the tests folder is on sys.path, as for the tests

    lines = summary_lines()
    if lines:
        terminalreporter.write_sep("-", "fuzz counts (inputs per target, by outcome)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small prepared dataset (tests/tiny_data.py), made once per test module."""
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture
def restore_torch_globals():
    """Trainer sets deterministic algorithms and the thread count process-wide; undo both."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture
def count_fused_calls(monkeypatch):
    """``count_fused_calls(module, name)``: replace the fused kernel ``name`` that ``module``
    imported with a wrapper that records each call; returns the list of calls. Skips where the
    kernels cannot be built, and turns them on if the environment had them off."""
    import dien.layers.fused as fused

    if fused.load_extension() is None:
        pytest.skip("the fused kernels could not be compiled here")
    monkeypatch.delenv(fused.DISABLE_VARIABLE, raising=False)

    def install(module, name):
        calls = []
        real = getattr(fused, name)

        def counting(*args):
            calls.append(1)
            return real(*args)

        monkeypatch.setattr(module, name, counting)
        return calls

    return install
