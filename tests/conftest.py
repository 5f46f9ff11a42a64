"""Test-wide settings.

Hypothesis: no per-example deadline. CI machines run slower and at uneven speed than a
workstation, and a property test that fails on time says nothing about the property; speed is
measured by `bench/`, never by tests. `print_blob` puts the reproduce decorator into a failure's
output, so a failure seen once in CI can be replayed locally.

The profile is built on the one loaded already: under CI (the `CI` variable set), Hypothesis'
own "ci" profile, which draws the same examples at every run (derandomized) and keeps no example
database; elsewhere its default, which draws new ones. `CI=1 make test` runs what CI runs.
"""

from hypothesis import settings

settings.register_profile("trainguard", deadline=None, print_blob=True)
settings.load_profile("trainguard")
