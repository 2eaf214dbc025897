"""``python -m writ_identity``: run one identity replica."""

from writ_common.service import run_service
from writ_identity.app import build

if __name__ == "__main__":
    run_service("identity", build)
