"""``python -m writ_executor``: run one executor replica."""

from writ_common.service import run_service
from writ_executor.app import build

if __name__ == "__main__":
    run_service("executor", build)
