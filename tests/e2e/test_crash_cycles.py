"""kill -9 mid-churn and restart: acknowledged writes stay, acknowledged deletes stay gone
(two cycles here; loadtest.chaos.crash_cycles runs a hundred)."""

from pathlib import Path

from loadtest.chaos.crash_cycles import run_cycles


def test_acknowledged_changes_survive_kill_9_cycles(tmp_path: Path) -> None:
    ledger = run_cycles(cycles=2, clients=4, workers=1, seed=3, data_dir=tmp_path)  # busy index
    assert ledger.writes > 0 and ledger.deletes > 0
    assert ledger.lost_writes == [] and ledger.revived_deletes == []
