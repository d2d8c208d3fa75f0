"""Test-wide settings."""

import torch

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
