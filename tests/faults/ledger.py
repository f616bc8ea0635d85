"""The fault-injection suite's ledger: each test (tests/faults locally, tests/slurm/test_faults.py on
the cluster) records the faults it injected and what survived; the session ends with one line of
figures (tests/conftest.py prints it whenever a fault test ran).

The line counts what was meant to run: every fault test (one that asks for the ``ledger`` fixture)
whose run began is attempted (:meth:`Ledger.begin`); one that failed or errored before it recorded a
fault counts as one fault attempted and not survived (:meth:`Ledger.end`), so a suite that cannot
reach its faults (a cluster set up without rsync) does not read as all survived."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    injected: list[str] = field(default_factory=list)  # every fault attempted, reached or not
    survived: list[str] = field(default_factory=list)
    lost_or_duplicated: int = 0
    resumes: int = 0
    identical: int = 0
    unreached: list[str] = field(default_factory=list)  # fault tests that ended before recording a fault
    _test: str | None = None
    _recorded: int = 0  # faults recorded by the current test

    def record(self, fault: str, *, survived: bool, lost_or_duplicated: int = 0, identical: bool | None = None) -> None:
        """One injected fault: whether the run survived it (the promise held), how many records it lost
        or duplicated, and, for a fault a resume follows, whether the resumed run is bit-identical."""
        self.injected.append(fault)
        self._recorded += 1
        if survived:
            self.survived.append(fault)
        self.lost_or_duplicated += lost_or_duplicated
        if identical is not None:
            self.resumes += 1
            self.identical += identical

    def begin(self, test: str) -> None:
        """A fault test starts (its setup included)."""
        self._test, self._recorded = test, 0

    def end(self, test: str, *, passed: bool) -> None:
        """A fault test ended; one that recorded no fault and did not pass counts as a fault attempted
        and not survived (it failed or errored before it injected one)."""
        if self._test == test and self._recorded == 0 and not passed:
            self.injected.append(f"{test} (not reached)")
            self.unreached.append(test)
        self._test, self._recorded = None, 0

    def line(self) -> str:
        return (
            f"fault injection: {len(self.injected)} faults attempted, {len(self.survived)} survived, "
            f"{self.lost_or_duplicated} records lost or duplicated, {self.identical}/{self.resumes} resumes bit-identical"
        )


LEDGER = Ledger()  # one per test session: the summary line counts every fault test that ran
