"""``python -m writ_ledger``: run one ledger replica."""

from writ_common.service import run_service
from writ_ledger.app import build

if __name__ == "__main__":
    run_service("ledger", build)
