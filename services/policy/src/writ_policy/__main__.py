"""``python -m writ_policy``: run one policy replica."""

from writ_common.service import run_service
from writ_policy.app import build

if __name__ == "__main__":
    run_service("policy", build)
