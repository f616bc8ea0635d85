"""The fault-injection suite's ledger: each test (tests/faults locally, tests/slurm/test_faults.py on
the cluster) records the faults it injected and what survived; the session ends with one line of
figures (tests/conftest.py prints it whenever a fault test ran)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    injected: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    lost_or_duplicated: int = 0
    resumes: int = 0
    identical: int = 0

    def record(self, fault: str, *, survived: bool, lost_or_duplicated: int = 0, identical: bool | None = None) -> None:
        """One injected fault: whether the run survived it (the promise held), how many records it lost
        or duplicated, and, for a fault a resume follows, whether the resumed run is bit-identical."""
        self.injected.append(fault)
        if survived:
            self.survived.append(fault)
        self.lost_or_duplicated += lost_or_duplicated
        if identical is not None:
            self.resumes += 1
            self.identical += identical

    def line(self) -> str:
        return (
            f"fault injection: {len(self.injected)} faults injected, {len(self.survived)} survived, "
            f"{self.lost_or_duplicated} records lost or duplicated, {self.identical}/{self.resumes} resumes bit-identical"
        )


LEDGER = Ledger()  # one per test session: the summary line counts every fault test that ran
