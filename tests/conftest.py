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
