"""``python -m writ_registry``: run one registry replica."""

from writ_common.service import run_service
from writ_registry.app import build

if __name__ == "__main__":
    run_service("registry", build)
