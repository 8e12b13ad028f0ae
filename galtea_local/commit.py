"""The commit this machine runs, for ``versions.get_or_create(auto_detect_commit_hash=True)``.

As the official SDK documents it: the commit a CI provider says it checked out,
else ``git rev-parse HEAD`` here, else none (never a made-up value). Local only:
environment variables and a local ``git`` process, no network.
"""

from __future__ import annotations

import os
import subprocess

# Each provider's own documented variable; Jenkins' generic name last.
_CI_VARIABLES = ("GITHUB_SHA", "CI_COMMIT_SHA", "CIRCLE_SHA1", "BUILD_SOURCEVERSION", "BITBUCKET_COMMIT",
                 "TRAVIS_COMMIT", "BUILDKITE_COMMIT", "DRONE_COMMIT_SHA", "CODEBUILD_RESOLVED_SOURCE_VERSION",
                 "SEMAPHORE_GIT_SHA", "APPVEYOR_REPO_COMMIT", "BUILD_VCS_NUMBER", "VERCEL_GIT_COMMIT_SHA",
                 "GIT_COMMIT")


def detect() -> str | None:
    for name in _CI_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    try:  # the full hash: an abbreviation's length differs between machines
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None
